"""The `lime_xl_edit` evaluate module: loading by name and by path offline, doctests, `evaluate.combine`.

`import evaluate` costs ~12 s, so every check runs in ONE fresh subprocess (HF_EVALUATE_OFFLINE=1, HF_MODULES_CACHE in
a temporary directory, working directory without a `lime_xl_edit` folder) that reports back as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import hf_lime.metrics
from hf_lime.metrics import CI_METRIC_NAMES

METRICS_DIR = Path(hf_lime.metrics.__file__).resolve().parent
RECORDS = {
    "predictions": ["a", "b", "c", "c", "x", "y"],
    "references": ["a", "a", "c", "c", "x", "z"],
    "edit_ids": ["1", "1", "2", "2", "1", "2"],
    "edit_languages": ["en", "en", "fr", "fr", "en", "fr"],
    "eval_languages": ["en", "fr", "fr", "en", "en", "fr"],
    "kinds": ["edit", "edit", "edit", "edit", "retain", "retain"],
}

TOY_ACCURACY = """
import datasets
import evaluate


class ToyAccuracy(evaluate.Metric):
    def _info(self):
        features = datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")})
        return evaluate.MetricInfo(description="toy", citation="", features=features)

    def _compute(self, predictions, references):
        return {"accuracy": sum(p == r for p, r in zip(predictions, references)) / len(predictions)}
"""

SCRIPT = r"""
import doctest, inspect, json, math, os, sys
from pathlib import Path

out = {}
import hf_lime
cache = Path(os.environ["HF_MODULES_CACHE"]) / "evaluate_modules" / "metrics" / "evaluate-metric--lime_xl_edit"
out["installed_on_import"] = cache.is_dir() and any(cache.glob("*/lime_xl_edit.py"))
import hf_lime.metrics as metrics
out["light_import"] = "evaluate" not in sys.modules and "matplotlib" not in sys.modules
installed = metrics.install_evaluate_module()

import evaluate
from evaluate.loading import files_to_hash

records = json.loads(os.environ["RECORDS"])
by_name = evaluate.load("lime_xl_edit")
module = sys.modules[type(by_name).__module__]
out["by_name_module"] = module.__name__
out["by_name"] = by_name.compute(**records, bootstrap=20, seed=1)
out["concrete_classes"] = [
    name for name, obj in vars(module).items()
    if inspect.isclass(obj) and issubclass(obj, evaluate.EvaluationModule) and not inspect.isabstract(obj)
    and obj.__module__ == module.__name__
]
out["module_doctest"] = list(doctest.testmod(module))
out["readme_doctest"] = list(doctest.testfile(str(Path(metrics.metric_path()) / "README.md"), module_relative=False))
out["docstring_has_examples"] = ">>> metric = evaluate.load" in (type(by_name).__doc__ or "")

by_helper = evaluate.load(metrics.metric_path())
by_path = evaluate.load(os.environ["METRIC_DIR"])
out["hashes"] = [installed.parent.name, by_name._hash, by_helper._hash, by_path._hash,
                 files_to_hash([os.environ["METRIC_DIR"] + "/lime_xl_edit.py"])]
out["by_path"] = by_path.compute(**records)

combined = evaluate.combine(["lime_xl_edit", os.environ["TOY"]])
combined.add_batch(**records)
out["combined"] = combined.compute()

errors = {}
for label, override in {"kind": {"kinds": ["edit"] * 5 + ["keep"]}, "length": {"edit_ids": ["1"]}, "int": {
        "predictions": [1, 2, 3, 4, 5, 6]}}.items():
    try:
        evaluate.load("lime_xl_edit").compute(**{**records, **override})
        errors[label] = None
    except Exception as error:
        errors[label] = [type(error).__name__, str(error)]
out["errors"] = errors
print("RESULT=" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    workdir = tmp_path_factory.mktemp("elsewhere")
    toy = workdir / "toy_accuracy"
    toy.mkdir()
    (toy / "toy_accuracy.py").write_text(TOY_ACCURACY, encoding="utf-8")
    package_root = str(METRICS_DIR.parents[1])
    env = {
        **os.environ,
        "HF_EVALUATE_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(workdir / "modules"),
        "HF_HOME": str(workdir / "hf_home"),
        "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
        "RECORDS": json.dumps(RECORDS),
        "METRIC_DIR": str(METRICS_DIR / "lime_xl_edit"),
        "TOY": str(toy),
    }
    env.pop("HF_LIME_SKIP_METRIC_INSTALL", None)
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT=")]
    assert completed.returncode == 0 and lines, completed.stdout[-3000:] + completed.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT=") :])


def test_loads_by_name_offline_from_the_installed_cache(report):
    assert report["by_name_module"].startswith("evaluate_modules.metrics.evaluate-metric--lime_xl_edit.")
    result = report["by_name"]
    assert (result["reliability"], result["transfer"], result["locality"]) == (1.0, 0.5, 0.5)
    assert result["es_matrix"] == {"en": {"en": 1.0, "fr": 0.0}, "fr": {"en": 1.0, "fr": 1.0}}
    assert set(result["ci"]) == set(CI_METRIC_NAMES)


def test_same_numbers_as_the_plain_function(report):
    expected = hf_lime.metrics.compute_xl_edit_metrics(**RECORDS)
    assert report["by_path"] == json.loads(json.dumps(expected))


def test_loads_by_path_and_helper_with_evaluates_own_hash(report):
    installed, by_name, by_helper, by_path, evaluate_hash = report["hashes"]
    assert installed == by_name == by_helper == by_path == evaluate_hash


def test_module_file_has_one_concrete_evaluation_module(report):
    assert report["concrete_classes"] == ["LimeXlEdit"]


def test_doctests_of_module_and_card_pass(report):
    failed, attempted = report["module_doctest"]
    assert failed == 0 and attempted >= 4
    failed, attempted = report["readme_doctest"]
    assert failed == 0 and attempted >= 6
    assert report["docstring_has_examples"]


def test_combine_with_another_module(report):
    combined = report["combined"]
    assert combined["accuracy"] == pytest.approx(4 / 6)
    assert combined["reliability"] == 1.0 and combined["n_records"] == 6


def test_bad_input_through_evaluate_raises_value_error(report):
    errors = report["errors"]
    assert errors["kind"][0] == "ValueError" and "kinds[5]" in errors["kind"][1]
    assert errors["length"][0] == "ValueError"
    assert errors["int"][0] in {"ValueError", "TypeError"} and "str" in errors["int"][1]


def test_metrics_package_import_stays_light(report):
    assert report["light_import"], "hf_lime.metrics imported evaluate or matplotlib at import time"


def test_import_hf_lime_installs_the_module(report):
    assert report["installed_on_import"], (
        "`import hf_lime` did not install lime_xl_edit: hf_lime/__init__.py must call "
        "hf_lime.metrics.install_evaluate_module_on_import()"
    )


def test_module_source_is_self_describing():
    source = (METRICS_DIR / "lime_xl_edit" / "lime_xl_edit.py").read_text(encoding="utf-8")
    for constant in ("_DESCRIPTION", "_KWARGS_DESCRIPTION", "_CITATION", "add_start_docstrings"):
        assert constant in source
    card = (METRICS_DIR / "lime_xl_edit" / "README.md").read_text(encoding="utf-8")
    for section in ("Description", "How to Use", "Inputs", "Output Values", "Examples", "Limitations", "Citation"):
        assert f"# {section}" in card or f"## Metric {section}" in card, section
    assert textwrap.dedent(card).startswith("---\n")


# ----------------------------------------------------------------------------------------------- the widget (app.py)
def _metric_app():
    import importlib.util

    path = Path(hf_lime.metrics.metric_path()) / "app.py"
    spec = importlib.util.spec_from_file_location("lime_xl_edit_app", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_metric_folder_has_a_space_app_and_requirements():
    folder = Path(hf_lime.metrics.metric_path())
    assert "hf_lime" in (folder / "requirements.txt").read_text().split()
    front = (folder / "README.md").read_text().split("---")[1]
    assert "sdk: gradio" in front and "app_file: app.py" in front


def test_the_widget_computes_the_metric_through_its_client(monkeypatch):
    pytest.importorskip("gradio", reason="the widget needs gradio (installed by the dev extra)")
    import evaluate
    from conftest import free_port
    from gradio_client import Client

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    app = _metric_app()
    direct = app.compute_from_rows(evaluate.load(hf_lime.metrics.metric_path()), app.EXAMPLE)
    assert (direct["reliability"], direct["transfer"], direct["locality"]) == (1.0, 0.5, 0.5)
    with pytest.raises(ValueError, match="one record per row"):
        app.compute_from_rows(evaluate.load(hf_lime.metrics.metric_path()), [["a", "b"]])
    widget = app.build_widget()
    widget.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(widget.local_url, verbose=False)
        table = {"headers": app.COLUMNS, "data": app.EXAMPLE[:3]}
        result = json.loads(client.predict(table, 0, api_name="/compute"))
        assert result["reliability"] == 1.0 and result["transfer"] == 0.5 and result["n_records"] == 3
    finally:
        widget.close()
