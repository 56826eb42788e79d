"""Cross-lingual edit metrics: hand-computed values, bad inputs, plots, the cache installer. No `evaluate` import."""

from __future__ import annotations

import doctest
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from hf_lime.metrics import (
    CI_METRIC_NAMES,
    METRIC_NAMES,
    SCALAR_METRIC_NAMES,
    compute_xl_edit_metrics,
    install_evaluate_module,
    install_evaluate_module_on_import,
    metric_path,
    plot_by_language,
    plot_es_loc,
    plot_matrix,
    xl_edit,
)
from hf_lime.metrics import install as install_module

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def records(*rows: tuple[str, str, str, str, str, str]) -> dict[str, list[str]]:
    """Rows of (prediction, reference, edit_id, edit_language, eval_language, kind) → keyword arguments."""
    names = ("predictions", "references", "edit_ids", "edit_languages", "eval_languages", "kinds")
    return {name: [row[i] for row in rows] for i, name in enumerate(names)}


def hit(edit_id, edit_language, eval_language, kind="edit"):
    return ("y", "y", edit_id, edit_language, eval_language, kind)


def miss(edit_id, edit_language, eval_language, kind="edit"):
    return ("n", "y", edit_id, edit_language, eval_language, kind)


# Two edits, three evaluation languages. Cells: en→en 1, en→fr 0, en→de 1, fr→fr 1, fr→en 1, fr→de 0.
TWO_EDITS = records(
    hit("e1", "en", "en"),
    miss("e1", "en", "fr"),
    hit("e1", "en", "de"),
    hit("e2", "fr", "fr"),
    hit("e2", "fr", "en"),
    miss("e2", "fr", "de"),
    hit("e1", "en", "fr", "retain"),
    miss("e1", "en", "fr", "retain"),
    hit("e2", "fr", "de", "retain"),
)


def test_diagonal_and_off_diagonal_by_hand():
    result = compute_xl_edit_metrics(**TWO_EDITS)
    assert result["es_matrix"] == {"en": {"de": 1.0, "en": 1.0, "fr": 0.0}, "fr": {"de": 0.0, "en": 1.0, "fr": 1.0}}
    assert result["reliability"] == 1.0  # en→en, fr→fr
    assert result["transfer"] == 0.5  # (0 + 1 + 1 + 0) / 4
    assert result["edit_success"] == pytest.approx(4 / 6)
    # Loc cells: en→fr = (1 + 0) / 2, fr→de = 1.
    assert result["loc_matrix"] == {"en": {"fr": 0.5}, "fr": {"de": 1.0}}
    assert result["locality"] == 0.75
    assert result["hmean"] == pytest.approx(2 * (4 / 6) * 0.75 / (4 / 6 + 0.75))
    assert result["es_by_language"] == {"de": 0.5, "en": 1.0, "fr": 0.5}
    assert result["loc_by_language"] == {"de": 1.0, "fr": 0.5}
    assert result["language_gap"] == 0.5
    assert result["language_std"] == pytest.approx(math.sqrt(1 / 18))  # population std of (1, .5, .5)
    assert (result["n_edits"], result["n_records"]) == (2, 9)


def test_unbalanced_cells_are_cell_means_not_record_means():
    result = compute_xl_edit_metrics(
        **records(hit("e1", "en", "en"), hit("e2", "en", "en"), hit("e3", "en", "en"), miss("e1", "en", "fr"))
    )
    assert result["es_matrix"] == {"en": {"en": 1.0, "fr": 0.0}}
    assert result["edit_success"] == 0.5  # the record mean would be 0.75
    assert (result["reliability"], result["transfer"]) == (1.0, 0.0)
    assert result["n_edits"] == 3


def test_missing_cells_are_absent_not_zero():
    result = compute_xl_edit_metrics(
        **records(hit("e1", "en", "en"), miss("e1", "en", "fr"), hit("e2", "fr", "fr"), hit("e2", "fr", "fr"))
    )
    assert result["es_matrix"] == {"en": {"en": 1.0, "fr": 0.0}, "fr": {"fr": 1.0}}
    assert "en" not in result["es_matrix"]["fr"]
    assert result["transfer"] == 0.0  # only en→fr exists off the diagonal
    assert result["es_by_language"] == {"en": 1.0, "fr": 0.5}


def test_single_language_transfer_is_nan_and_gap_zero():
    result = compute_xl_edit_metrics(**records(hit("e1", "en", "en"), miss("e2", "en", "en")))
    assert math.isnan(result["transfer"])
    assert result["reliability"] == result["edit_success"] == 0.5
    assert (result["language_gap"], result["language_std"]) == (0.0, 0.0)


def test_without_retain_records_locality_and_hmean_are_nan():
    result = compute_xl_edit_metrics(**records(hit("e1", "en", "en")))
    assert math.isnan(result["locality"]) and math.isnan(result["hmean"])
    assert result["loc_matrix"] == {} and result["loc_by_language"] == {}


def test_only_retain_records_leave_edit_metrics_nan():
    result = compute_xl_edit_metrics(**records(hit("e1", "en", "fr", "retain")))
    assert result["locality"] == 1.0
    for name in ("reliability", "transfer", "edit_success", "hmean", "language_gap", "language_std"):
        assert math.isnan(result[name]), name


def test_hmean_is_zero_when_both_are_zero_and_when_one_is_zero():
    both_zero = compute_xl_edit_metrics(**records(miss("e1", "en", "en"), miss("e1", "en", "en", "retain")))
    assert (both_zero["edit_success"], both_zero["locality"], both_zero["hmean"]) == (0.0, 0.0, 0.0)
    one_zero = compute_xl_edit_metrics(**records(hit("e1", "en", "en"), miss("e1", "en", "en", "retain")))
    assert one_zero["hmean"] == 0.0


def test_class_ids_as_strings_and_exact_match():
    result = compute_xl_edit_metrics(
        predictions=["2", "1", "Paris "],
        references=["2", "1.0", "Paris"],
        edit_ids=["a", "a", "a"],
        edit_languages=["en"] * 3,
        eval_languages=["en", "fr", "de"],
        kinds=["edit"] * 3,
    )
    assert result["es_matrix"] == {"en": {"de": 0.0, "en": 1.0, "fr": 0.0}}


def test_numpy_arrays_of_str_are_accepted():
    as_arrays = {name: np.array(values) for name, values in TWO_EDITS.items()}
    assert repr(compute_xl_edit_metrics(**as_arrays)) == repr(compute_xl_edit_metrics(**TWO_EDITS))  # NaN-safe
    with pytest.raises(ValueError, match=r"predictions\[0\]` is int"):
        compute_xl_edit_metrics(**{**TWO_EDITS, "predictions": np.arange(9)})


def test_result_keys_follow_metric_names():
    result = compute_xl_edit_metrics(**TWO_EDITS)
    assert tuple(result) == METRIC_NAMES
    assert all(isinstance(result[name], float) for name in SCALAR_METRIC_NAMES)
    assert set(CI_METRIC_NAMES) <= set(SCALAR_METRIC_NAMES)
    assert "ci" not in result


def _many_edits() -> dict[str, list[str]]:
    rows = []
    for i in range(40):
        language = ("en", "fr", "de")[i % 3]
        rows.append(hit(str(i), language, language) if i % 5 else miss(str(i), language, language))
        rows.append(hit(str(i), language, "en") if i % 2 else miss(str(i), language, "en"))
        rows.append(hit(str(i), language, "fr", "retain") if i % 4 else miss(str(i), language, "fr", "retain"))
        rows.append(hit(str(i), language, "de", "neighbour") if i % 7 else miss(str(i), language, "de", "neighbour"))
        rows.append(hit(str(i), language, "en", "sequence") if i % 6 else miss(str(i), language, "en", "sequence"))
    return records(*rows)


def test_bootstrap_is_seeded_and_contains_the_point_estimate():
    first = compute_xl_edit_metrics(**_many_edits(), bootstrap=300, seed=7)
    again = compute_xl_edit_metrics(**_many_edits(), bootstrap=300, seed=7)
    other = compute_xl_edit_metrics(**_many_edits(), bootstrap=300, seed=8)
    assert first["ci"] == again["ci"]
    assert first["ci"] != other["ci"]
    assert set(first["ci"]) == set(CI_METRIC_NAMES)
    for name in CI_METRIC_NAMES:
        low, high = first["ci"][name]
        assert low <= first[name] <= high, name
        assert low < high, name  # 40 edits with mixed outcomes give a non-degenerate interval


def test_bootstrap_interval_narrows_with_lower_confidence():
    wide = compute_xl_edit_metrics(**_many_edits(), bootstrap=300, confidence=0.99)["ci"]["edit_success"]
    narrow = compute_xl_edit_metrics(**_many_edits(), bootstrap=300, confidence=0.5)["ci"]["edit_success"]
    assert wide[0] <= narrow[0] <= narrow[1] <= wide[1]
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


def test_bootstrap_resamples_edits_not_records():
    # One edit: every resample of the edit ids is that same edit, so every interval collapses to the point estimate,
    # although its records disagree (a record-level bootstrap would spread).
    result = compute_xl_edit_metrics(**TWO_EDITS, bootstrap=50)
    single = compute_xl_edit_metrics(
        **records(hit("e1", "en", "en"), miss("e1", "en", "en"), hit("e1", "en", "fr"), miss("e1", "en", "fr")),
        bootstrap=50,
    )
    assert single["ci"]["edit_success"] == [0.5, 0.5]
    assert math.isnan(single["ci"]["locality"][0])  # no retain records: undefined in every resample
    assert result["ci"]["reliability"] == [1.0, 1.0]


BAD_INPUTS = [
    ({"predictions": ["y"]}, "same length"),
    ({"kinds": ["edit", "edit", "keep"]}, r"kinds\[2\].*'keep'"),
    ({"references": ["y", 1, "y"]}, r"references\[1\]` is int"),
    ({"predictions": ["y", "y", 1.0]}, r"predictions\[2\]` is float.*'1.0' != '1'"),
    ({"eval_languages": ["en", None, "en"]}, r"eval_languages\[1\]` is NoneType"),
    ({"edit_ids": "abc"}, "edit_ids` must be a list of str"),
    ({"edit_languages": ["en", "", "en"]}, r"edit_languages\[1\]` is an empty string"),
    ({"edit_languages": ["en", "fr", "en"]}, "appears with edit languages 'en' and 'fr'"),
]


@pytest.mark.parametrize("override, message", BAD_INPUTS)
def test_bad_records_raise_value_error(override, message):
    arguments = records(hit("e1", "en", "en"), hit("e1", "en", "fr"), hit("e1", "en", "de", "retain"))
    arguments.update(override)
    with pytest.raises(ValueError, match=message):
        compute_xl_edit_metrics(**arguments)


def test_empty_input_raises_value_error():
    with pytest.raises(ValueError, match="Empty input"):
        compute_xl_edit_metrics([], [], [], [], [], [])


@pytest.mark.parametrize(
    "options, message",
    [
        ({"bootstrap": -1}, "bootstrap"),
        ({"bootstrap": True}, "bootstrap"),
        ({"bootstrap": 2.5}, "bootstrap"),
        ({"confidence": 1.0}, "confidence"),
        ({"confidence": 0}, "confidence"),
        ({"seed": -3}, "seed"),
    ],
)
def test_bad_bootstrap_options_raise_value_error(options, message):
    with pytest.raises(ValueError, match=message):
        compute_xl_edit_metrics(**records(hit("e1", "en", "en")), **options)


def test_doctests_of_the_math_installer_and_docs():
    for module in (xl_edit, install_module):
        assert doctest.testmod(module, raise_on_error=False).failed == 0, module.__name__
    outcome = doctest.testfile(str(REPO / "docs" / "metrics.md"), module_relative=False)
    assert outcome.attempted >= 4 and outcome.failed == 0


def _assert_png(path: Path, min_bytes: int = 5_000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > min_bytes, (path, len(data))


def test_plots_write_png_files(tmp_path):
    result = compute_xl_edit_metrics(**TWO_EDITS)
    written = plot_es_loc(result, tmp_path / "figures" / "run")
    assert written == [tmp_path / "figures" / "run_es.png", tmp_path / "figures" / "run_loc.png"]
    bars = plot_by_language(result, tmp_path / "bars.png")
    single = plot_matrix({"en": {"en": 0.25}}, "one cell", tmp_path / "one.png")
    for path in [*written, bars, single]:
        _assert_png(path)


def test_plot_es_loc_skips_an_empty_matrix_and_rejects_bad_input(tmp_path):
    result = compute_xl_edit_metrics(**records(hit("e1", "en", "en")))
    assert plot_es_loc(result, tmp_path / "run") == [tmp_path / "run_es.png"]
    with pytest.raises(ValueError, match="nested dict"):
        plot_matrix({"en": 1.0}, "bad", tmp_path / "bad.png")
    with pytest.raises(ValueError, match="es_matrix"):
        plot_es_loc({"reliability": 1.0}, tmp_path / "bad")


def _cached_versions(cache: Path) -> Path:
    return cache / "evaluate_modules" / "metrics" / "evaluate-metric--lime_xl_edit"


def test_install_writes_evaluates_cache_layout(tmp_path):
    script = install_evaluate_module(modules_cache=tmp_path)
    source = (Path(metric_path()) / "lime_xl_edit.py").read_text(encoding="utf-8")
    assert script.read_text(encoding="utf-8") == source
    assert script.parent.parent == _cached_versions(tmp_path)
    assert script.parent.name == install_module.evaluate_module_hash(source)
    assert len(script.parent.name) == 64
    for package in (tmp_path, tmp_path / "evaluate_modules", script.parent.parent.parent, script.parent.parent):
        assert (package / "__init__.py").is_file(), package
    assert (script.parent / "__init__.py").is_file()
    assert not list(script.parent.glob("*.tmp"))


def test_install_is_idempotent_and_repairs_a_modified_copy(tmp_path):
    script = install_evaluate_module(modules_cache=tmp_path)
    before = script.stat()
    assert install_evaluate_module(modules_cache=tmp_path) == script
    after = script.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rewritten
    script.write_text("# stale\n", encoding="utf-8")
    install_evaluate_module(modules_cache=tmp_path)
    assert script.read_text(encoding="utf-8") == (Path(metric_path()) / "lime_xl_edit.py").read_text(encoding="utf-8")
    inode = script.stat().st_ino
    install_evaluate_module(force=True, modules_cache=tmp_path)
    assert script.stat().st_ino != inode  # force rewrites (atomically, through a new file)


def test_install_makes_this_version_the_newest_cached_one(tmp_path):
    script = install_evaluate_module(modules_cache=tmp_path)
    other = _cached_versions(tmp_path) / ("0" * 64) / "lime_xl_edit.py"
    other.parent.mkdir()
    other.write_text("# another version\n", encoding="utf-8")
    future = script.stat().st_mtime + 100
    os.utime(other, (future, future))
    install_evaluate_module(modules_cache=tmp_path)
    assert script.stat().st_mtime > other.stat().st_mtime  # evaluate loads the newest


def test_install_on_import_can_be_skipped_and_never_raises(tmp_path, monkeypatch, caplog):
    monkeypatch.delitem(sys.modules, "evaluate.config", raising=False)  # else evaluate's resolved cache wins
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_LIME_SKIP_METRIC_INSTALL", "1")
    assert install_evaluate_module_on_import() is None
    assert not (tmp_path / "cache").exists()
    monkeypatch.delenv("HF_LIME_SKIP_METRIC_INSTALL")
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("", encoding="utf-8")
    monkeypatch.setenv("HF_MODULES_CACHE", str(blocker))
    assert install_evaluate_module_on_import() is None
    assert "Could not install" in caplog.text
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "cache"))
    assert install_evaluate_module_on_import() == install_evaluate_module(modules_cache=tmp_path / "cache")


def test_matrices_keep_the_order_languages_first_appear_in():
    result = compute_xl_edit_metrics(
        **records(hit("e1", "zh", "zh"), hit("e1", "zh", "en"), hit("e2", "en", "zh"), hit("e2", "en", "en"))
    )
    assert list(result["es_matrix"]) == ["zh", "en"]
    assert list(result["es_matrix"]["en"]) == ["zh", "en"]
    assert list(result["es_by_language"]) == ["zh", "en"]


# Locality in parts, by hand. Edit e1 (en): neighbours en 1/2 (cell en→en 0.5) and fr 1/1 (1.0); retain fr 0/1;
# sequence en 1/1. Edit e2 (fr): neighbour fr 0/1 (cell fr→fr 0.0); retain en 1/1; sequence none.
PARTS = records(
    hit("e1", "en", "en"),
    hit("e2", "fr", "fr"),
    miss("e2", "fr", "en"),
    hit("e1", "en", "en", "neighbour"),
    miss("e1", "en", "en", "neighbour"),
    hit("e1", "en", "fr", "neighbour"),
    miss("e1", "en", "fr", "retain"),
    hit("e1", "en", "en", "sequence"),
    miss("e2", "fr", "fr", "neighbour"),
    hit("e2", "fr", "en", "retain"),
)


def test_locality_parts_by_hand():
    result = compute_xl_edit_metrics(**PARTS)
    # cells: neighbour en→en 0.5, en→fr 1.0, fr→fr 0.0 → mean 0.5
    assert result["locality_same_relation"] == pytest.approx(0.5)
    # retain cells en→fr 0.0, fr→en 1.0 → 0.5
    assert result["locality_other"] == pytest.approx(0.5)
    # sequence cell en→en 1.0
    assert result["locality_sequence"] == pytest.approx(1.0)
    # pooled neighbour + retain: en→en 1/2, en→fr 1/2, fr→fr 0/1, fr→en 1/1 → (0.5 + 0.5 + 0 + 1) / 4
    assert result["locality"] == pytest.approx(0.5)
    assert result["loc_matrix"] == {"en": {"en": 0.5, "fr": 0.5}, "fr": {"fr": 0.0, "en": 1.0}}
    # edit success: cells en→en 1, fr→fr 1, fr→en 0 → 2/3; hmean with same-relation locality 0.5
    edit_success = 2 / 3
    assert result["edit_success"] == pytest.approx(edit_success)
    assert result["hmean_same_relation"] == pytest.approx(2 * edit_success * 0.5 / (edit_success + 0.5))


def test_locality_parts_absent_are_nan_and_do_not_move_the_pooled_locality():
    only_retain = compute_xl_edit_metrics(**TWO_EDITS)
    assert math.isnan(only_retain["locality_same_relation"]) and math.isnan(only_retain["locality_sequence"])
    assert math.isnan(only_retain["hmean_same_relation"])
    assert only_retain["locality_other"] == only_retain["locality"]
    # sequence records are a separate reading: they never enter the pooled locality
    with_sequence = records(*zip(*TWO_EDITS.values(), strict=True), miss("e1", "en", "fr", "sequence"))
    result = compute_xl_edit_metrics(**with_sequence)
    assert result["locality"] == only_retain["locality"] and result["locality_sequence"] == 0.0
