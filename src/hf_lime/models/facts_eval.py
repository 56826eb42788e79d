"""Fact-completion examples and precision@1 for masked LMs: open vocabulary and restricted to candidates.

An example is a cloze prompt with ``"[Y]"`` and a target label in one language. Open-vocabulary precision@1 asks
every target token to be the argmax at its mask (one mask per target token, as mLAMA does). Candidate-restricted
precision@1 ranks every object of the relation in that language: each candidate of ``k`` tokens is scored by the
mean log-probability of its tokens in the prompt with ``k`` masks.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import torch

from ..head import head_at

logger = logging.getLogger(__name__)

PLACEHOLDER = "[Y]"


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


def mask_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor):
    """Vocabulary logits of a masked LM at the ``positions`` mask only (never the full ``B×T×V``).

    Args:
        model (`PreTrainedModel`): the masked LM.
        input_ids, attention_mask (`torch.Tensor`): the padded batch.
        positions (`torch.Tensor`): boolean ``(B, T)``, true at the positions to score.

    Returns:
        `torch.Tensor`: ``(positions.sum(), vocab)`` logits, in row-major order of ``positions``.
    """
    with head_at(model.get_output_embeddings(), positions):
        return model(input_ids=input_ids, attention_mask=attention_mask).logits


def candidate_table(rows: Iterable[dict], tokenizer) -> dict[tuple[str, str], list[tuple[int, ...]]]:
    """Per (relation, language), the distinct token-id tuples of every object label seen in ``rows``."""
    from hf_lime.data.encoding import target_token_ids

    table: dict[tuple[str, str], set] = {}
    cache: dict[str, tuple[int, ...]] = {}
    for row in rows:
        target = row["target"]
        if target not in cache:
            try:
                cache[target] = tuple(target_token_ids(tokenizer, target))
            except ValueError:
                continue
        table.setdefault((row["relation"], row["language"]), set()).add(cache[target])
    return {key: sorted(value) for key, value in table.items()}


def _masked_prompt(tokenizer, prompt: str, k: int, max_length: int) -> list[int] | None:
    ids = tokenizer(prompt.replace(PLACEHOLDER, tokenizer.mask_token * k), truncation=True, max_length=max_length)
    ids = list(ids["input_ids"])
    return ids if sum(1 for i in ids if i == tokenizer.mask_token_id) == k else None


def _jobs(tokenizer, rows, gold, candidates, max_length) -> list[tuple[int, int, list[int]]]:
    """(row index, number of masks, input ids) for every length needed: the gold's and each candidate's."""
    jobs = []
    for index, row in enumerate(rows):
        if gold[index] is None:
            continue
        lengths = {len(gold[index])} | {len(c) for c in candidates.get((row["relation"], row["language"]), [])}
        for k in sorted(lengths):
            ids = _masked_prompt(tokenizer, row["prompt"], k, max_length)
            if ids is not None:
                jobs.append((index, k, ids))
    return jobs


def _score_job(row_logprobs: torch.Tensor, k: int, gold: tuple[int, ...], cands: list[tuple[int, ...]], best: dict):
    """Update ``best`` (open-vocabulary hit, best candidate score and ids) with one prompt of ``k`` masks."""
    if k == len(gold):
        best["open"] = tuple(row_logprobs.argmax(dim=-1).tolist()) == gold
    same = [c for c in cands if len(c) == k]
    if same:
        ids = torch.tensor(same, device=row_logprobs.device)
        scores = row_logprobs.gather(1, ids.T).mean(dim=0)
        top = int(scores.argmax())
        if float(scores[top]) > best.get("score", float("-inf")):
            best["score"], best["choice"] = float(scores[top]), same[top]


@torch.no_grad()
def evaluate_facts(
    model,
    tokenizer,
    rows: Sequence[dict],
    candidates,
    batch_size: int = 32,
    max_length: int = 64,
    vocab_limit: int | None = None,
    progress: bool = True,
) -> dict:
    """Precision@1 per language, over the open vocabulary and restricted to each relation's candidates.

    Args:
        model (`BertForMaskedLM`): the masked LM.
        tokenizer (`PreTrainedTokenizerBase`): its tokenizer (with a mask token).
        rows (`Sequence[dict]`): output of `flatten_facts`.
        candidates (`dict`): output of `candidate_table` (should include the gold objects).
        batch_size (`int`, *optional*, defaults to 32): prompts per forward pass.
        max_length (`int`, *optional*, defaults to 64): truncation length.
        vocab_limit (`int`, *optional*): only ids below it can be predicted (the tokenizer's real vocabulary).
        progress (`bool`, *optional*, defaults to `True`): show a tqdm bar.

    Returns:
        `dict`: ``precision_at_1`` and ``precision_at_1_candidates`` (language -> score) and ``num_examples``.
    """
    from tqdm.auto import tqdm

    from hf_lime.data.encoding import pad_batch, target_token_ids

    model.eval()
    device = next(model.parameters()).device
    gold = []
    for row in rows:
        try:
            gold.append(tuple(target_token_ids(tokenizer, row["target"])))
        except ValueError:
            gold.append(None)
    jobs = sorted(_jobs(tokenizer, rows, gold, candidates, max_length), key=lambda job: len(job[2]))
    best: list[dict] = [{} for _ in rows]
    for start in tqdm(range(0, len(jobs), batch_size), desc="evaluating facts", disable=not progress):
        chunk = jobs[start : start + batch_size]
        batch = pad_batch(tokenizer, [{"input_ids": ids, "attention_mask": [1] * len(ids)} for _, _, ids in chunk])
        batch = {key: value.to(device) for key, value in batch.items()}
        positions = batch["input_ids"] == tokenizer.mask_token_id
        logits = mask_logits(model, batch["input_ids"], batch["attention_mask"], positions)
        if vocab_limit is not None:
            logits[:, vocab_limit:] = float("-inf")
        logprobs = torch.log_softmax(logits.float(), dim=-1).split([k for _, k, _ in chunk])
        for (index, k, _), row_logprobs in zip(chunk, logprobs, strict=True):
            key = (rows[index]["relation"], rows[index]["language"])
            _score_job(row_logprobs, k, gold[index], candidates.get(key, []), best[index])
    return _aggregate(rows, gold, best)


def _aggregate(rows: Sequence[dict], gold: Sequence, best: Sequence[dict]) -> dict:
    open_hits: dict[str, list[int]] = {}
    cand_hits: dict[str, list[int]] = {}
    for row, target, result in zip(rows, gold, best, strict=True):
        if target is None or "open" not in result:
            continue
        open_hits.setdefault(row["language"], []).append(int(result["open"]))
        cand_hits.setdefault(row["language"], []).append(int(result.get("choice") == target))
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
