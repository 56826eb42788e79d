"""Fact-completion examples and precision@1 for masked LMs: open vocabulary and restricted to candidates.

An example is a cloze prompt with ``"[Y]"`` and a target label in one language. Open-vocabulary precision@1 asks
every target token to be the argmax at its mask (one mask per target token, as mLAMA does). Candidate-restricted
precision@1 ranks every object of the relation in that language with `hf_lime.evaluation.candidates.CandidateRanker`:
each candidate of ``k`` tokens is scored by the mean log-probability of its tokens in the prompt with ``k`` masks.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import torch

from ..data.encoding import PLACEHOLDER

logger = logging.getLogger(__name__)


def flatten_facts(items: Iterable[Mapping], languages: Sequence[str] | None = None) -> list[dict]:
    """One ``{prompt, target, language, relation}`` row per (item, language), skipping empty prompts/targets.

    Args:
        items (`Iterable[Mapping]`): rows of the item schema (``relation``, ``languages``, ``prompts``, ``targets``).
        languages (`Sequence[str]`, *optional*): languages to keep; defaults to all.
    """
    rows = []
    for item in items:
        for language, prompt, target in zip(item["languages"], item["prompts"], item["targets"], strict=True):
            if languages is not None and language not in languages:
                continue
            if target.strip() and prompt.count(PLACEHOLDER) == 1:
                rows.append({"prompt": prompt, "target": target, "language": language, "relation": item["relation"]})
    return rows


def encode_facts(tokenizer, rows: Sequence[dict], max_length: int = 64) -> list[dict]:
    """Encode rows with ``hf_lime.data.encoding.encode_example(tokenizer, "masked_lm", ...)``.

    Rows that cannot be encoded (a mask would be truncated, the target tokenizes to nothing) are dropped with a
    logged count; each kept feature carries its row index under ``"row"``.
    """
    from hf_lime.data.encoding import encode_example

    features, dropped = [], 0
    for index, row in enumerate(rows):
        try:
            feature = encode_example(tokenizer, "masked_lm", row["prompt"], row["target"], max_length=max_length)
        except ValueError:
            dropped += 1
            continue
        feature.pop("token_type_ids", None)
        feature["row"] = index
        features.append(feature)
    if dropped:
        logger.info("Dropped %d of %d fact rows that could not be encoded", dropped, len(rows))
    return features


def candidate_table(rows: Iterable[dict]) -> dict[tuple[str, str], list[str]]:
    """Per (relation, language), the distinct object labels seen in ``rows``."""
    table: dict[tuple[str, str], set[str]] = {}
    for row in rows:
        table.setdefault((row["relation"], row["language"]), set()).add(row["target"])
    return {key: sorted(value) for key, value in table.items()}


@torch.no_grad()
def evaluate_facts(
    model,
    tokenizer,
    rows: Sequence[dict],
    candidates: Mapping[tuple[str, str], Sequence[str]],
    batch_size: int = 32,
    max_length: int = 64,
    progress: bool = True,
) -> dict:
    """Precision@1 per language, over the open vocabulary and restricted to each relation's candidates.

    Open vocabulary: the prompt with one mask per gold token, every gold token the argmax at its mask (logits at
    the masks only). Candidates: `hf_lime.evaluation.candidates.CandidateRanker` (mean log-probability of each
    candidate's tokens, normalised over the candidate vocabulary).

    Args:
        model (`BertForMaskedLM`): the masked LM.
        tokenizer (`PreTrainedTokenizerBase`): its tokenizer (with a mask token).
        rows (`Sequence[dict]`): output of `flatten_facts`.
        candidates (`Mapping`): output of `candidate_table` (should include the gold objects).
        batch_size (`int`, *optional*, defaults to 32): prompts per forward pass.
        max_length (`int`, *optional*, defaults to 64): truncation length.
        progress (`bool`, *optional*, defaults to `True`): show a tqdm bar.

    Returns:
        `dict`: ``precision_at_1`` and ``precision_at_1_candidates`` (language -> score) and ``num_examples``.
    """
    from tqdm.auto import tqdm

    from hf_lime.data.encoding import pad_batch
    from hf_lime.evaluation.candidates import CandidateRanker, RankingQuery
    from hf_lime.head import target_logits

    model.eval()
    device = next(model.parameters()).device
    features = encode_facts(tokenizer, rows, max_length)
    ranker = CandidateRanker(model, tokenizer, candidates, max_length=max_length, batch_size=batch_size)
    open_hits: dict[str, list[int]] = {}
    cand_hits: dict[str, list[int]] = {}
    for start in tqdm(range(0, len(features), batch_size), desc="evaluating facts", disable=not progress):
        chunk = features[start : start + batch_size]
        batch = pad_batch(tokenizer, [{k: v for k, v in f.items() if k != "row"} for f in chunk])
        correct = target_logits(model, {k: v.to(device) for k, v in batch.items()}, "masked_lm").row_correct()
        chunk_rows = [rows[f["row"]] for f in chunk]
        ranked = ranker.rank([RankingQuery(r["prompt"], r["relation"], r["language"]) for r in chunk_rows])
        for row, hit, choice in zip(chunk_rows, correct, ranked, strict=True):
            open_hits.setdefault(row["language"], []).append(int(hit))
            cand_hits.setdefault(row["language"], []).append(int(choice == row["target"]))
    return {
        "precision_at_1": {lang: sum(v) / len(v) for lang, v in sorted(open_hits.items())},
        "precision_at_1_candidates": {lang: sum(v) / len(v) for lang, v in sorted(cand_hits.items())},
        "num_examples": {lang: len(v) for lang, v in sorted(open_hits.items())},
    }


def majority_baseline(train_rows: Sequence[dict], eval_rows: Sequence[dict]) -> dict[str, float]:
    """Per language, the share of ``eval_rows`` whose target is the most frequent training object of its relation."""
    counts: dict[tuple[str, str], Counter] = {}
    for row in train_rows:
        counts.setdefault((row["relation"], row["language"]), Counter())[row["target"]] += 1
    hits: dict[str, list[int]] = {}
    for row in eval_rows:
        counter = counts.get((row["relation"], row["language"]))
        top = counter.most_common(1)[0][0] if counter else None
        hits.setdefault(row["language"], []).append(int(row["target"] == top))
    return {lang: sum(v) / len(v) for lang, v in sorted(hits.items())}
