"""Rank a relation's candidate objects for a cloze prompt (mLAMA's "typed querying") with a masked LM.

A candidate of `k` tokens is scored in the prompt with `k` mask tokens by the mean log-probability of its tokens at
those masks; the prediction is the best-scoring candidate. Log-probabilities are normalised over the *candidate
vocabulary* (every token of every candidate label the ranker knows) rather than the model's whole vocabulary: the
projection then costs a few hundred rows of the output embeddings instead of all of them (250k for XLM-R), and the
scores of one prompt keep their order (the normaliser of a mask position is shared by every candidate scored there).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..data.encoding import PLACEHOLDER, pad_batch, target_token_ids
from ..head import logits_at


def length_batches(lengths: Sequence[int], batch_size: int, bucket: int = 1) -> list[list[int]]:
    """Indices grouped into batches of rows of one width (at most `batch_size` each), in order of width. A row's
    width is its length rounded up to a multiple of `bucket` (1: its own length, no padding), so a prompt is the same
    padded row whatever else is scored with it (what a prefix cache keys on); pad each batch with
    `pad_to_multiple_of=bucket`."""
    groups: dict[int, list[int]] = {}
    for index, length in enumerate(lengths):
        groups.setdefault(-(-length // bucket) * bucket, []).append(index)
    return [group[start : start + batch_size] for _, group in sorted(groups.items())
            for start in range(0, len(group), batch_size)]  # fmt: skip


def length_bucket(tokenizer: Any, bucket: int) -> int:
    """The bucket rows are padded to: `bucket` for a tokenizer that pads on the right (padding past a row's tokens
    changes none of their outputs), 1 (no padding) for one that pads on the left (it would move the positions)."""
    if isinstance(bucket, bool) or not isinstance(bucket, int) or bucket < 1:
        raise ValueError(f"`length_bucket` must be an int >= 1, got {bucket!r}.")
    return bucket if getattr(tokenizer, "padding_side", "right") == "right" else 1


@dataclass(frozen=True)
class RankingQuery:
    """One prompt (with `"[Y]"`) whose object is chosen among the candidates of `(relation, language)`."""

    prompt: str
    relation: str
    language: str


class CandidateRanker:
    """
    Chooses, for cloze prompts, the best of their relation's candidate objects in their language.

    Args:
        model (`nn.Module`): A masked LM (a `PeftModel` is fine); edits applied to it are seen.
        tokenizer (`PreTrainedTokenizerBase`): Its tokenizer (with a mask token).
        candidates (`Mapping[tuple[str, str], Sequence[str]]`): `(relation, language)` -> candidate labels.
        max_length (`int`, *optional*, defaults to `128`): Maximum tokens per prompt.
        batch_size (`int`, *optional*, defaults to `64`): Prompts per forward pass.
        bucket (`int`, *optional*, defaults to `1`): Prompts are right-padded to a multiple of this many tokens and
            batched by padded width (`length_batches`): fewer, larger forwards (1: one length per forward).

    Example:

    ```py
    >>> ranker = CandidateRanker(model, tokenizer, {("capital", "en"): ["Paris", "Lyon"]})  # doctest: +SKIP
    >>> ranker.rank([RankingQuery("The capital of France is [Y].", "capital", "en")])  # doctest: +SKIP
    ['Paris']

    ```
    """

    def __init__(
        self,
        model,
        tokenizer,
        candidates: Mapping[tuple[str, str], Sequence[str]],
        max_length: int = 128,
        batch_size: int = 64,
        bucket: int = 1,
    ) -> None:
        if tokenizer.mask_token is None:
            raise ValueError("Ranking candidates needs a masked LM tokenizer with a mask token.")
        self.model, self.tokenizer = model, tokenizer
        self.max_length, self.batch_size, self.bucket = max_length, batch_size, length_bucket(tokenizer, bucket)
        self.labels: dict[tuple[str, str], list[str]] = {}
        self.ids: dict[tuple[str, str], list[tuple[int, ...]]] = {}
        for key, labels in candidates.items():
            unique = sorted(set(labels))
            self.labels[key] = unique
            self.ids[key] = [tuple(target_token_ids(tokenizer, label)) for label in unique]
        vocab = sorted({token for ids in self.ids.values() for cand in ids for token in cand})
        if not vocab:
            raise ValueError("CandidateRanker needs at least one candidate label.")
        self.vocab = torch.tensor(vocab, dtype=torch.long)
        self._column = {token: column for column, token in enumerate(vocab)}
        self._prompt_cache: dict[tuple[str, int], list[int] | None] = {}

    def candidates_of(self, relation: str, language: str) -> list[str]:
        key = (relation, language)
        if key not in self.labels:
            raise ValueError(f"No candidates for relation {relation!r} in {language!r}; known: {sorted(self.labels)}.")
        return self.labels[key]

    def _prompt_ids(self, prompt: str, k: int) -> list[int] | None:
        if (prompt, k) not in self._prompt_cache:
            text = prompt.replace(PLACEHOLDER, self.tokenizer.mask_token * k)
            ids = list(self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"])
            found = sum(1 for i in ids if i == self.tokenizer.mask_token_id)
            self._prompt_cache[(prompt, k)] = ids if found == k else None
        return self._prompt_cache[(prompt, k)]

    def _jobs(self, queries: Sequence[RankingQuery]) -> list[tuple[int, int, list[int]]]:
        jobs = []
        for index, query in enumerate(queries):
            self.candidates_of(query.relation, query.language)
            if query.prompt.count(PLACEHOLDER) != 1:
                raise ValueError(f"A ranking prompt needs {PLACEHOLDER!r} exactly once, got {query.prompt!r}.")
            lengths = sorted({len(c) for c in self.ids[(query.relation, query.language)]})
            for k in lengths:
                ids = self._prompt_ids(query.prompt, k)
                if ids is not None:
                    jobs.append((index, k, ids))
        return jobs

    @torch.no_grad()
    def rank(self, queries: Sequence[RankingQuery]) -> list[str]:
        """The best candidate label of each query."""
        device = next(self.model.parameters()).device
        jobs = self._jobs(queries)
        best: list[tuple[float, str]] = [(float("-inf"), "") for _ in queries]
        mask_id = self.tokenizer.mask_token_id
        for indices in length_batches([len(ids) for _, _, ids in jobs], self.batch_size, self.bucket):
            chunk = [jobs[i] for i in indices]
            rows = [{"input_ids": ids, "attention_mask": [1] * len(ids)} for _, _, ids in chunk]
            batch = pad_batch(self.tokenizer, rows, pad_to_multiple_of=self.bucket)
            batch = {key: value.to(device) for key, value in batch.items()}
            keep = batch["input_ids"] == mask_id
            logprobs = torch.log_softmax(logits_at(self.model, batch, keep, self.vocab).float(), dim=-1)
            for (index, k, _), scores in zip(chunk, logprobs.split([k for _, k, _ in chunk]), strict=True):
                best[index] = max(best[index], self._best_of_length(scores, queries[index], k))
        return [label for _, label in best]

    def _best_of_length(self, scores: torch.Tensor, query: RankingQuery, k: int) -> tuple[float, str]:
        key = (query.relation, query.language)
        same = [(label, ids) for label, ids in zip(self.labels[key], self.ids[key], strict=True) if len(ids) == k]
        columns = torch.tensor([[self._column[token] for token in ids] for _, ids in same], device=scores.device)
        means = scores.gather(1, columns.T).mean(dim=0)
        top = int(means.argmax())
        return float(means[top]), same[top][0]
