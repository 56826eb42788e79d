"""benchmarks/compare_records.py: paired differences of two readings of the same edits, gzipped or not."""

from __future__ import annotations

import gzip
import importlib.util
import json
import subprocess
import sys

from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "compare_records.py"


def records(edit_correct: list[str]) -> dict:
    """Two facts edited in en, read in en and fr: edit records only, `correct` as given."""
    n = len(edit_correct)
    return {
        "edit_ids": ["e0", "e0", "e1", "e1"][:n], "group_ids": ["g0", "g0", "g1", "g1"][:n],
        "edit_languages": ["en"] * n, "eval_languages": ["en", "fr", "en", "fr"][:n], "kinds": ["edit"] * n,
        "predictions": edit_correct, "references": ["yes"] * n,
    }  # fmt: skip


def test_the_difference_of_two_readings_is_paired_per_edit(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # it reuses demo_controls.compare
    spec = importlib.util.spec_from_file_location("compare_records", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    base, cand = tmp_path / "base.json.gz", tmp_path / "cand.json"
    base.write_bytes(gzip.compress(json.dumps(records(["yes", "no", "no", "no"])).encode()))
    cand.write_text(json.dumps(records(["yes", "yes", "yes", "no"])))
    assert module.read_records(str(base))["predictions"][0] == "yes"
    out = tmp_path / "diff.json"
    run = subprocess.run([sys.executable, str(SCRIPT), str(base), str(cand), "--json", str(out), "--bootstrap", "50"],
                         capture_output=True, text=True, cwd=REPO_ROOT)  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert result["reliability"]["baseline"] == 0.5 and result["reliability"]["candidate"] == 1.0
    assert result["transfer"]["difference"] == 0.5
    assert "difference +0.500" in run.stdout
