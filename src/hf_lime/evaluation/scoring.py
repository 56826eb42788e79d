"""How the harness reads a model's answer to an item in a language: open vocabulary, or ranked candidates.

Both scorers render answers and references as comparable strings, so the records the harness writes are the inputs
of `lime_xl_edit` whatever the scoring:

- [`TargetScorer`] (`scoring="open"`): the argmax at the target positions, the prompt encoded with as many masks as
  the reference target has tokens (LM tasks; every token must be right), or the class (classifiers). Rendered as the
  tokens joined by spaces, classes as their id (`"2"`).
- [`RankingScorer`] (`scoring="candidates"`, masked LMs): the best of the relation's candidate objects in that
  language ([`CandidateRanker`], mLAMA's typed querying). Rendered as the candidate label.

Locality is read at the retain item's target the same way (`locality="target"`), or, with `locality="sequence"`
(masked LMs), as the LiME reference reads it: [`SequenceScorer`] fills the retain prompt's object slot with a span of
masks of random length and takes the argmax at *every* position of the sequence (rendered as the ids joined by
spaces); the edit keeps the item only if not one of them changes.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..data.encoding import (
    IGNORE_INDEX,
    PLACEHOLDER,
    encode_example,
    model_inputs,
    pad_batch,
    predict_from_logits,
    target_token_ids,
)
from ..data.items import ParsedItem, parse_item, target_table
from ..fast_argmax import argmax_product
from ..head import hidden_at, output_layer, target_positions, target_predictions
from .candidates import CandidateRanker, RankingQuery, length_batches, length_bucket

SCORINGS = ("open", "candidates")
LOCALITY_PROTOCOLS = ("target", "sequence", "both")

Query = tuple[ParsedItem, str, str]
"""`(item, language, target label)`: the item's prompt in `language`, read against `target`."""


def digest(seed: int, *parts: str) -> int:
    """A 64-bit number that depends only on the seed and the parts (never on Python's string hash seed)."""
    text = ":".join(["hf_lime.evaluation", str(seed), *parts])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def cached_answers(cache: dict, pairs: Sequence[tuple[ParsedItem, str]], answer) -> list[str]:
    """Answers to `(item, language)` pairs, computed once: `answer(missing_pairs)` fills `cache` (keyed by
    `(item.id, language)`) for the pairs it lacks, in one call."""
    todo = list({(item.id, language): (item, language) for item, language in pairs if (item.id, language) not in
                 cache}.values())  # fmt: skip
    for (item, language), value in zip(todo, answer(todo) if todo else [], strict=True):
        cache[(item.id, language)] = value
    return [cache[(item.id, language)] for item, language in pairs]


class TargetScorer:
    """Open-vocabulary answers at the target positions (or classes); see the module docstring."""

    def __init__(self, model: Any, tokenizer: Any, task: str, label2id, max_length: int, batch_size: int,
                 bucket: int = 1) -> None:  # fmt: skip
        self.model, self.tokenizer, self.task = model, tokenizer, task
        self.label2id, self.max_length, self.batch_size = label2id, max_length, batch_size
        self.bucket = length_bucket(tokenizer, bucket)  # queries are padded to a multiple of it (`predict`)
        self.device = next(model.parameters()).device
        self._base: dict[tuple[str, str], str] = {}

    def encode(self, item: ParsedItem, language: str, target: str) -> dict[str, Any]:
        position = item.positions[language]
        try:
            return encode_example(
                self.tokenizer,
                self.task,
                item.prompts[position],
                target,
                pair=item.pairs[position] or None,
                label2id=self.label2id,
                max_length=self.max_length,
            )
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"Cannot encode item {item.id!r} in {language!r} with target {target!r}: {error}"
            ) from error

    def edit_batch(self, item: ParsedItem, language: str, target: str) -> dict[str, torch.Tensor]:
        """The batch `model.edit` gets: the item's prompt in `language` with `target` as the new answer (padded as
        the scored queries are: the same row as the reliability query, so the prefix cache serves it)."""
        return self._batch([self.encode(item, language, target)], self.bucket)

    def inputs_batch(self, rows: Sequence[tuple[ParsedItem, str, str]]) -> dict[str, torch.Tensor]:
        """A padded batch of `(item, language, target)` rows (e.g. locality inputs shown to an editor)."""
        return self._batch([self.encode(*row) for row in rows], self.bucket)

    def _batch(self, features: Sequence[Mapping[str, Any]], multiple: int) -> dict[str, torch.Tensor]:
        batch = pad_batch(self.tokenizer, features, pad_to_multiple_of=multiple)
        return {key: value.to(self.device) for key, value in batch.items()}

    def _render(self, ids: list[int] | int) -> str:
        if self.task == "seq_cls":
            return str(int(ids))
        return " ".join(self.tokenizer.convert_ids_to_tokens(list(ids)))

    def reference(self, item: ParsedItem, language: str, target: str) -> str:
        """`target` rendered as an answer is (what a correct prediction equals)."""
        labels = self.encode(item, language, target)["labels"]
        return self._render(labels if self.task == "seq_cls" else [i for i in labels if i != IGNORE_INDEX])

    @torch.no_grad()
    def predict(self, queries: Sequence[Query]) -> list[str]:
        """The model's current answer to each query: forward passes in batches of `batch_size` rows of one length,
        then (LMs with a plain output layer) one argmax over the vocabulary for every target row of every batch."""
        features = [self.encode(*query) for query in queries]
        predictions: list[str] = [""] * len(features)
        pending: list[tuple[list[int], list[int], torch.Tensor]] = []  # (indices, targets per row, hidden rows)
        for indices in length_batches([len(f["input_ids"]) for f in features], self.batch_size, self.bucket):
            batch = self._batch([features[i] for i in indices], self.bucket)
            rows = self._target_rows(batch)
            if rows is None:
                for index, ids in zip(indices, self._predict_batch(batch), strict=True):
                    predictions[index] = self._render(ids)
            else:
                pending.append((indices, target_positions(self.task, batch["labels"]).sum(dim=1).tolist(), rows))
        if pending:
            head = output_layer(self.model)
            ids = argmax_product(torch.cat([rows for _, _, rows in pending]), head.weight, head.bias).tolist()
            for indices, counts, _ in pending:
                for index, count in zip(indices, counts, strict=True):
                    predictions[index], ids = self._render(ids[:count]), ids[count:]
        return predictions

    def _predict_batch(self, batch: dict[str, torch.Tensor]) -> list:
        if self.task == "seq_cls":
            inputs = {key: value for key, value in batch.items() if key != "labels"}
            return predict_from_logits(self.task, self.model(**inputs).logits, batch)
        return target_predictions(self.model, batch, self.task)

    def _target_rows(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if self.task == "seq_cls":
            return None
        inputs = {key: value for key, value in batch.items() if key not in ("labels", "lang_ids")}
        return hidden_at(self.model, inputs, target_positions(self.task, batch["labels"]))

    def base(self, pairs: Sequence[tuple[ParsedItem, str]]) -> list[str]:
        """Answers to `(item, language)` read against the item's gold target, cached: call it on the unedited model."""
        return cached_answers(self._base, pairs, self._gold_answers)

    def _gold_answers(self, pairs: Sequence[tuple[ParsedItem, str]]) -> list[str]:
        return self.predict([(item, language, item.targets[item.positions[language]]) for item, language in pairs])


def candidate_table(items: Sequence[ParsedItem | Mapping[str, Any]]) -> dict[tuple[str, str], list[str]]:
    """`(relation, language)` -> the sorted objects of that relation named in `items` (parsed items or rows of the
    common schema, e.g. every split of a dataset: the candidates a `"candidates"` reading ranks)."""
    parsed = [item if isinstance(item, ParsedItem) else parse_item(item, set(item["languages"])) for item in items]
    table: dict[tuple[str, str], set[str]] = {}
    for relation, targets in target_table(parsed).items():
        for _, labels in targets:
            for language, label in labels.items():
                table.setdefault((relation, language), set()).add(label)
    return {key: sorted(labels) for key, labels in table.items()}


class RankingScorer(TargetScorer):
    """Answers ranked among the relation's candidate objects in each language (masked LMs); see the module docstring.

    The candidates of a relation in a language are the objects of that relation among the evaluated items, plus
    `candidates` (e.g. every object of the relation).
    """

    def __init__(self, model: Any, tokenizer: Any, task: str, label2id, max_length: int, batch_size: int,
                 items: Sequence[ParsedItem], candidates: Mapping[tuple[str, str], Sequence[str]] | None = None,
                 bucket: int = 1) -> None:  # fmt: skip
        if task != "masked_lm":
            raise ValueError(f"scoring='candidates' ranks objects with a masked LM; task={task!r} needs 'open'.")
        super().__init__(model, tokenizer, task, label2id, max_length, batch_size, bucket)
        table = {key: list(labels) for key, labels in candidate_table(items).items()}
        for key, labels in (candidates or {}).items():
            table.setdefault(tuple(key), []).extend(str(label) for label in labels if str(label).strip())
        self.ranker = CandidateRanker(model, tokenizer, table, max_length=max_length, batch_size=batch_size,
                                      bucket=bucket)  # fmt: skip

    def reference(self, item: ParsedItem, language: str, target: str) -> str:
        return target

    @torch.no_grad()
    def predict(self, queries: Sequence[Query]) -> list[str]:
        ranking = [RankingQuery(item.prompts[item.positions[language]], item.relation, language)
                   for item, language, _ in queries]  # fmt: skip
        return self.ranker.rank(ranking)


def make_scorer(scoring: str, model, tokenizer, task: str, label2id, max_length: int, batch_size: int,
                items: Sequence[ParsedItem], candidates: Mapping[tuple[str, str], Sequence[str]] | None = None,
                bucket: int = 1) -> TargetScorer:  # fmt: skip
    """The scorer of `scoring` (`"open"` or `"candidates"`; `candidates` adds objects to rank; `bucket`: queries
    right-padded to a multiple of it and batched by padded width)."""
    if scoring not in SCORINGS:
        raise ValueError(f"Unknown scoring {scoring!r}; allowed values are {SCORINGS}.")
    if scoring == "candidates":
        return RankingScorer(model, tokenizer, task, label2id, max_length, batch_size, items, candidates, bucket)
    return TargetScorer(model, tokenizer, task, label2id, max_length, batch_size, bucket)


class SequenceScorer:
    """
    Locality as the LiME reference reads it on mLAMA (`locality="sequence"`, masked LMs): the retain prompt's object
    slot becomes `k` mask tokens, `k` drawn (seeded, per item and language) from the token lengths of that language's
    objects among the items, as the reference draws its `label_length`; the answer is the argmax at every non-padding
    position (special tokens included), so an edit keeps the item only if no prediction in the whole sequence moves.

    Args:
        model: The masked LM (a `PeftModel` is fine).
        tokenizer: Its tokenizer (needs a mask token).
        items (`Sequence[ParsedItem]`): The items whose object lengths give each language's span lengths.
        seed (`int`): Seed of the span lengths.
        max_length (`int`): Maximum tokens per prompt.
        batch_size (`int`): Rows per forward (full-vocabulary logits at every position: keep it small).
    """

    def __init__(self, model: Any, tokenizer: Any, items: Sequence[ParsedItem], seed: int, max_length: int,
                 batch_size: int) -> None:  # fmt: skip
        if getattr(tokenizer, "mask_token", None) is None:
            raise ValueError("locality='sequence' fills the object slot with mask tokens; this tokenizer has none.")
        self.model, self.tokenizer, self.seed = model, tokenizer, seed
        self.max_length, self.batch_size = max_length, batch_size
        self.device = next(model.parameters()).device
        self.lengths: dict[str, list[int]] = {}
        for item in items:
            for language, label in sorted(item.gold_labels().items()):
                self.lengths.setdefault(language, []).append(len(target_token_ids(tokenizer, label)))
        self._base: dict[tuple[str, str], str] = {}

    def span_length(self, item: ParsedItem, language: str) -> int:
        """The number of masks in the object slot of `item` in `language` (fixed by the seed)."""
        lengths = self.lengths.get(language)
        if not lengths:
            raise ValueError(f"No item has an object in {language!r} to draw a span length from.")
        return random.Random(digest(self.seed, "span", item.id, language)).choice(lengths)

    def encode(self, item: ParsedItem, language: str) -> dict[str, list[int]]:
        prompt = item.prompts[item.positions[language]]
        text = prompt.replace(PLACEHOLDER, self.tokenizer.mask_token * self.span_length(item, language))
        return model_inputs(self.tokenizer(text, truncation=True, max_length=self.max_length))

    @torch.no_grad()
    def predict(self, pairs: Sequence[tuple[ParsedItem, str]]) -> list[str]:
        """The argmax ids at every position of each `(item, language)` sequence, joined by spaces."""
        features = [self.encode(*pair) for pair in pairs]
        answers: list[str] = [""] * len(features)
        for indices in length_batches([len(f["input_ids"]) for f in features], self.batch_size):
            batch = pad_batch(self.tokenizer, [features[i] for i in indices])
            batch = {key: value.to(self.device) for key, value in batch.items()}
            for index, row in zip(indices, self._argmax_everywhere(batch), strict=True):
                answers[index] = " ".join(str(i) for i in row)
        return answers

    def _argmax_everywhere(self, batch: dict[str, torch.Tensor]) -> list[list[int]]:
        """The argmax at every position of each row (the rows of a batch have one length: no padding)."""
        keep = torch.ones_like(batch["input_ids"], dtype=torch.bool)
        hidden = hidden_at(self.model, batch, keep)
        if hidden is None:
            return self.model(**batch).logits.argmax(-1).tolist()
        head = output_layer(self.model)
        return argmax_product(hidden, head.weight, head.bias).view(keep.shape).tolist()

    def base(self, pairs: Sequence[tuple[ParsedItem, str]]) -> list[str]:
        """`predict` on the unedited model, cached: call it before any edit."""
        return cached_answers(self._base, pairs, self.predict)
