"""Grouped bootstrap intervals (edits of one fact are not independent) and paired comparisons of two runs."""

from __future__ import annotations

import numpy as np
import pytest

from hf_lime.metrics import compare_xl_edit_metrics, compute_xl_edit_metrics
from hf_lime.metrics.xl_edit import _resample_weights


def records(correct_by_fact: dict[str, bool], languages=("en", "fr", "de", "es", "ru", "zh", "ar", "ja")) -> dict:
    """Each fact edited once in every language and scored in that language only: right iff the fact is 'right'."""
    out = {key: [] for key in ("predictions", "references", "edit_ids", "edit_languages", "eval_languages", "kinds")}
    groups = []
    for fact, right in correct_by_fact.items():
        for lang in languages:
            out["predictions"].append("y" if right else "n")
            out["references"].append("y")
            out["edit_ids"].append(f"{lang}:{fact}")
            out["edit_languages"].append(lang)
            out["eval_languages"].append(lang)
            out["kinds"].append("edit")
            groups.append(fact)
    return out | {"group_ids": groups}


def test_group_weights_move_together():
    rng = np.random.default_rng(0)
    weights = _resample_weights(rng, 50, np.array([0, 0, 1, 2, 2, 2]))
    assert np.array_equal(weights[:, 0], weights[:, 1])
    assert np.array_equal(weights[:, 3], weights[:, 4]) and np.array_equal(weights[:, 4], weights[:, 5])
    assert np.all(weights[:, [0, 2, 3]].sum(axis=1) == 3)  # each replicate draws 3 groups (one edit of each shown)


def test_grouped_interval_by_hand():
    """Two facts, one right in all 8 languages and one wrong in all: 16 edits but only 2 independent facts.

    Resampling the 2 facts gives reliability 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4: the 95 % interval is
    [0, 1]. Resampling the 16 edits as if independent gives a far narrower interval around 1/2.
    """
    data = records({"fact-a": True, "fact-b": False})
    groups = data.pop("group_ids")
    grouped = compute_xl_edit_metrics(**data, bootstrap=2000, seed=1, group_ids=groups)
    plain = compute_xl_edit_metrics(**data, bootstrap=2000, seed=1)
    assert grouped["reliability"] == plain["reliability"] == 0.5
    assert grouped["ci"]["reliability"] == [0.0, 1.0]
    low, high = plain["ci"]["reliability"]
    assert 0.2 < low < 0.5 < high < 0.8


def test_group_ids_are_validated():
    data = records({"a": True, "b": False})
    groups = data.pop("group_ids")
    with pytest.raises(ValueError, match="one entry per record"):
        compute_xl_edit_metrics(**data, bootstrap=10, group_ids=groups[:-1])
    data["edit_ids"][1] = data["edit_ids"][0]  # now one edit would span two records ...
    data["edit_languages"][1] = data["edit_languages"][0]
    bad = list(groups)
    bad[1] = "other"  # ... with two groups
    with pytest.raises(ValueError, match="two group ids"):
        compute_xl_edit_metrics(**data, bootstrap=10, group_ids=bad)


def test_the_evaluate_module_takes_group_ids():
    from hf_lime.metrics import metric_path

    evaluate = pytest.importorskip("evaluate")
    metric = evaluate.load(str(metric_path()))
    data = records({"fact-a": True, "fact-b": False})
    groups = data.pop("group_ids")
    result = metric.compute(**data, bootstrap=500, seed=1, group_ids=groups)
    assert result["ci"]["reliability"] == [0.0, 1.0]


# ------------------------------------------------------------------------------------------------ paired comparison
def test_identical_runs_differ_by_zero():
    data = records({f"f{i}": i % 3 == 0 for i in range(12)})
    groups = data.pop("group_ids")
    result = compare_xl_edit_metrics(data, dict(data), group_ids=groups, bootstrap=300)
    assert result["reliability"]["difference"] == 0.0 and result["reliability"]["ci"] == [0.0, 0.0]
    assert set(result) >= {"reliability", "transfer", "edit_success", "locality", "hmean", "language_gap"}


def test_paired_interval_of_a_consistent_gain_excludes_zero():
    """The candidate fixes 6 facts the baseline got wrong and breaks none: the paired interval is above zero."""
    base = records({f"f{i}": i < 6 for i in range(20)})
    groups = base.pop("group_ids")
    cand = records({f"f{i}": i < 12 for i in range(20)})
    cand.pop("group_ids")
    cand = {key: list(reversed(value)) for key, value in cand.items()}  # record order does not matter
    result = compare_xl_edit_metrics(base, cand, group_ids=groups, bootstrap=1000, seed=0)
    assert result["reliability"]["baseline"] == pytest.approx(0.3)
    assert result["reliability"]["candidate"] == pytest.approx(0.6)
    assert result["reliability"]["difference"] == pytest.approx(0.3)
    low, high = result["reliability"]["ci"]
    assert 0.0 < low < 0.3 < high


def test_pairing_refuses_runs_on_different_edits():
    base = records({"a": True, "b": False})
    base.pop("group_ids")
    other = records({"a": True, "c": False})
    other.pop("group_ids")
    with pytest.raises(ValueError, match="not evaluated on the same edits"):
        compare_xl_edit_metrics(base, other, bootstrap=10)
    shifted = {**base, "references": ["z"] + base["references"][1:]}
    with pytest.raises(ValueError, match="not evaluated on the same edits"):
        compare_xl_edit_metrics(base, shifted, bootstrap=10)
    with pytest.raises(ValueError, match="lacks the record columns"):
        compare_xl_edit_metrics({"predictions": []}, base, bootstrap=10)
    with pytest.raises(ValueError, match="bootstrap"):
        compare_xl_edit_metrics(base, base, bootstrap=0)
