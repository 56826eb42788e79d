"""`evaluate_editor(num_workers=n)`: the edits shared among forked worker processes give the serial loop's records,
leave the parent's model untouched, and report a worker's failure with its traceback (`hf_lime.evaluation.workers`).
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers_facts import LANGUAGES, build_fact_tokenizer, fact_items, pretrained_fact_model
from peft import get_peft_model

from hf_lime import LimeConfig
from hf_lime.evaluation import evaluate_editor
from hf_lime.evaluation.workers import fork_supported, run_forked

pytestmark = pytest.mark.skipif(not fork_supported()[0], reason=f"no fork here: {fork_supported()[1]}")


@pytest.fixture(scope="module")
def world():
    tokenizer, items = build_fact_tokenizer(), fact_items()
    base = pretrained_fact_model(tokenizer, items, steps=250)
    config = LimeConfig(languages=LANGUAGES, use_lime_mask=False, target_modules=["output.dense"],
                        layers_to_transform=[1])  # fmt: skip
    model = get_peft_model(copy.deepcopy(base), config)
    with torch.no_grad():
        model.base_model.edit_lrs.fill_(0.1)
    return tokenizer, items, model


def run(model, tokenizer, items, **kwargs):
    options = {"task": "masked_lm", "n_edits": 4, "n_retain": 2, "n_neighbours": 3, "progress": False,
               "return_records": True, "locality": "both", "extra_scorings": ("candidates",),
               "bootstrap": 50}  # fmt: skip
    return evaluate_editor(model, tokenizer, items, **(options | kwargs))


def test_workers_give_the_serial_records_and_metrics(world):
    tokenizer, items, model = world
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    torch.set_num_threads(1)  # the serial run at the workers' thread count: bit-identical products
    serial = run(model, tokenizer, items)
    shared = run(model, tokenizer, items, num_workers=3)
    assert shared.settings["num_workers"] == 3 and serial.settings["num_workers"] == 1
    assert shared.records == serial.records and len(serial.records["predictions"]) > 0
    assert shared.readings["candidates"].records == serial.readings["candidates"].records
    assert shared.metrics == serial.metrics
    # the workers' cache counters are added to the parent's: as many lookups as the serial loop made
    lookups = [sum(r.settings["prefix_cache"][k] for k in ("hits", "misses", "bypassed")) for r in (serial, shared)]
    assert lookups[0] == lookups[1] > 0
    for name, parameter in model.named_parameters():  # the edits happened in the children's copies only
        assert torch.equal(parameter, before[name]), name


def test_more_workers_than_edits_and_bad_counts(world):
    tokenizer, items, model = world
    result = run(model, tokenizer, items, n_edits=1, languages=LANGUAGES[:1], num_workers=8)
    assert result.settings["num_workers"] == 1
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError, match="num_workers"):
            run(model, tokenizer, items, num_workers=bad)


def _square_or_fail(value: int) -> int:
    if value == 3:
        raise KeyError("no threes")
    return value * value


def test_run_forked_keeps_the_order_and_reports_progress_and_finish():
    seen = []
    results, finished = run_forked(_square_or_fail, [0, 1, 2, 4, 5], 2, on_result=lambda: seen.append(1),
                                   finish=lambda: {"pid_done": True})  # fmt: skip
    assert results == [0, 1, 4, 16, 25] and len(seen) == 5 and finished == [{"pid_done": True}] * 2


def test_a_failing_worker_raises_with_its_traceback():
    with pytest.raises(RuntimeError, match=r"(?s)worker 1 failed.*KeyError: 'no threes'"):
        run_forked(_square_or_fail, [0, 3, 1], 2)
    with pytest.raises(ValueError, match="num_workers must be at least 1"):
        run_forked(_square_or_fail, [0], 0)


def test_results_must_be_json():
    with pytest.raises(RuntimeError, match="not JSON serializable"):
        run_forked(lambda value: {value}, [1], 1)
