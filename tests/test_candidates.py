"""Ranking a relation's candidate objects (mLAMA's typed querying) and the harness's `scoring="candidates"`."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers_facts import LANGUAGES, build_fact_tokenizer, fact_items, pretrained_fact_model
from peft import get_peft_model

import hf_lime  # noqa: F401  (registers the method)
from hf_lime import LimeConfig
from hf_lime.data.encoding import PLACEHOLDER, target_token_ids
from hf_lime.evaluation import evaluate_editor
from hf_lime.evaluation.candidates import CandidateRanker, RankingQuery


@pytest.fixture(scope="module")
def world():
    tokenizer, items = build_fact_tokenizer(), fact_items()
    return tokenizer, items, pretrained_fact_model(tokenizer, items, steps=250)


def brute_force(model, tokenizer, query: RankingQuery, labels: list[str], vocab: list[int]) -> str:
    """Each candidate in its own prompt of k masks, full logits, log-softmax over the candidate vocabulary."""
    scores = {}
    for label in labels:
        ids = target_token_ids(tokenizer, label)
        text = query.prompt.replace(PLACEHOLDER, tokenizer.mask_token * len(ids))
        inputs = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits[inputs["input_ids"] == tokenizer.mask_token_id][:, vocab]
        logprobs = logits.log_softmax(-1)
        scores[label] = float(torch.stack([logprobs[i, vocab.index(t)] for i, t in enumerate(ids)]).mean())
    return max(scores, key=scores.get)


def test_ranker_equals_scoring_every_candidate_by_hand(world):
    tokenizer, items, model = world
    labels = ["city0", "city1", "city2 city3", "city4 city0", "city5 city5 city1"]  # 1, 2 and 3 tokens
    ranker = CandidateRanker(model, tokenizer, {("born", "en"): labels, ("born", "fr"): labels[:3]})
    vocab = ranker.vocab.tolist()
    assert vocab == sorted({t for label in labels for t in target_token_ids(tokenizer, label)})
    queries = [RankingQuery(item["prompts"][i], "born", lang) for item in items[:6] for i, lang in enumerate(LANGUAGES)
               if lang in ("en", "fr")]  # fmt: skip
    ranked = ranker.rank(queries)
    for query, choice in zip(queries, ranked, strict=True):
        assert choice == brute_force(model, tokenizer, query, ranker.candidates_of("born", query.language), vocab)


def test_ranker_finds_the_facts_the_model_knows(world):
    tokenizer, items, model = world
    table = {("born", lang): sorted({item["targets"][i] for item in items}) for i, lang in enumerate(LANGUAGES)}
    ranker = CandidateRanker(model, tokenizer, table, batch_size=5)
    queries = [RankingQuery(item["prompts"][i], "born", lang) for item in items for i, lang in enumerate(LANGUAGES)]
    gold = [item["targets"][i] for item in items for i, _ in enumerate(LANGUAGES)]
    assert ranker.rank(queries) == gold


def test_ranker_errors(world):
    tokenizer, _, model = world
    ranker = CandidateRanker(model, tokenizer, {("born", "en"): ["city0"]})
    with pytest.raises(ValueError, match="No candidates for relation 'capital' in 'en'"):
        ranker.rank([RankingQuery("x [Y] .", "capital", "en")])
    with pytest.raises(ValueError, match="exactly once"):
        ranker.rank([RankingQuery("no placeholder", "born", "en")])
    with pytest.raises(ValueError, match="at least one candidate"):
        CandidateRanker(model, tokenizer, {})


def _model(base, step_size: float):
    config = LimeConfig(languages=LANGUAGES, use_lime_mask=False, target_modules=["output.dense"],
                        layers_to_transform=[1])  # fmt: skip
    model = get_peft_model(copy.deepcopy(base), config)
    with torch.no_grad():
        model.base_model.edit_lrs.fill_(step_size)
    return model


def test_harness_scores_candidates(world):
    tokenizer, items, base = world
    options = {"task": "masked_lm", "n_edits": 4, "n_retain": 3, "progress": False, "scoring": "candidates"}
    frozen = evaluate_editor(_model(base, 0.0), tokenizer, items, return_records=True, **options)
    assert frozen.metrics["locality"] == 1.0 and frozen.metrics["edit_success"] == 0.0
    assert frozen.settings["scoring"] == "candidates"
    objects = {target for item in items for target in item["targets"]}
    assert set(frozen.records["predictions"]) <= objects  # answers are candidate labels
    edited = evaluate_editor(_model(base, 0.1), tokenizer, items, **options).metrics
    assert edited["reliability"] > 0.0


def test_harness_rejects_bad_scoring(world):
    tokenizer, items, base = world
    with pytest.raises(ValueError, match="Unknown scoring 'topk'"):
        evaluate_editor(_model(base, 0.0), tokenizer, items, "masked_lm", scoring="topk")


def test_pre_edit_floor_is_what_an_editor_that_changes_nothing_scores(world):
    """A model that does not know the facts sometimes already answers the new object: that is the floor."""
    tokenizer, items, base = world
    model = _model(base, 0.0)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in model.base_model.model.named_parameters():
            if "cls.predictions" in name or "encoder.layer.1" in name:
                param.normal_(0.0, 0.5)  # scramble what the model knows
    options = {"task": "masked_lm", "n_edits": 6, "n_retain": 0, "progress": False, "scoring": "candidates"}
    result = evaluate_editor(model, tokenizer, items, **options)
    floor = result.settings["pre_edit_floor"]
    assert 0.0 < floor["edit_success"] < 1.0
    assert floor["edit_success"] == pytest.approx(result.metrics["edit_success"])
    assert floor["reliability"] == pytest.approx(result.metrics["reliability"])
    assert floor["transfer"] == pytest.approx(result.metrics["transfer"])
