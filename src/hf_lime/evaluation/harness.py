"""The cross-lingual edit evaluation harness: edit in one language, score in every language, revert.

For every edit language `l_e`, `n_edits` items are edited one at a time (the prompt in `l_e` with a new target in
`l_e`); after each edit the *same* item is scored in every evaluation language `l` (edit success, reference = the new
target in `l`) and `n_retain` unrelated items are scored in every `l` (locality, reference = the unedited model's own
prediction). Each edit is reverted before the next, so the model is bit-identical afterwards. The records go through
`hf_lime.metrics.compute_xl_edit_metrics`, the arithmetic of the `lime_xl_edit` evaluate module. The protocol is
documented in `docs/evaluation.md`; the paper is https://huggingface.co/papers/2205.12677.
"""

from __future__ import annotations

import functools
import itertools
import logging
import random
import warnings
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Any

from ..data.episodes import NEW_TARGET_MODES, sample_excluding
from ..data.items import ParsedItem, parse_item, target_table
from ..languages import check_language_subset, check_languages
from ..metrics import compute_xl_edit_metrics
from ..prefix_cache import DEFAULT_MAX_BYTES, PrefixCache, optional_prefix_cache
from ..tasks import check_task, model_label2id
from .candidates import length_bucket as length_bucket_of
from .report import EvaluationResult
from .scoring import LOCALITY_PROTOCOLS, SCORINGS, SequenceScorer, TargetScorer, make_scorer
from .scoring import digest as _digest
from .workers import fork_supported, run_forked

logger = logging.getLogger(__name__)

LENGTH_BUCKET = 8  # scored prompts are right-padded to a multiple of this many tokens (`length_bucket`)
RECORD_FIELDS = ("predictions", "references", "edit_ids", "edit_languages", "eval_languages", "kinds", "group_ids")
"""The keys of `EvaluationResult.records`: exactly the inputs of `compute_xl_edit_metrics` and `lime_xl_edit`
(`group_ids` is the id of the item an edit was made from: the edits of one item in several languages are one group
for the bootstrap)."""


@dataclass(frozen=True)
class _EditPlan:
    """One edit: the item, the language it is made in, its new target per language, its retain items (other facts),
    its neighbours (facts of the same relation about other subjects) and the locality inputs shown to the editor."""

    edit_id: str
    item: ParsedItem
    language: str
    labels: dict[str, str]
    retain: tuple[ParsedItem, ...]
    locality: tuple[ParsedItem, ...] = ()
    neighbours: tuple[ParsedItem, ...] = ()


class _Planner:
    """Chooses the edited items, their new targets and their retain items, deterministically from the seed."""

    def __init__(self, items: list[ParsedItem], eval_languages: list[str], new_target: str, seed: int) -> None:
        self.items, self.eval_languages, self.new_target, self.seed = items, eval_languages, new_target, seed
        self.table = target_table(items)
        self.order = sorted(range(len(items)), key=lambda i: (_digest(seed, "item", items[i].id), items[i].id))
        self.retain_pool = [i for i, item in enumerate(items) if self._has_gold(item, eval_languages)]
        self.by_relation: dict[str, list[int]] = {}

    @staticmethod
    def _has_gold(item: ParsedItem, languages: Sequence[str]) -> bool:
        gold = item.gold_labels()
        return all(language in gold for language in languages)

    def new_labels(self, item: ParsedItem, edit_language: str) -> dict[str, str] | None:
        """The new target per language, labelled in the edit and every evaluation language (`None` if none)."""
        needed = [edit_language, *self.eval_languages]
        if not all(language in item.positions for language in needed):
            return None
        if self.new_target == "gold":
            return item.gold_labels() if self._has_gold(item, needed) else None
        candidates = [
            labels
            for target_id, labels in self.table.get(item.relation, [])
            if target_id != item.target_id and all(language in labels for language in needed)
        ]
        if not candidates:
            return None
        return candidates[_digest(self.seed, "target", item.id) % len(candidates)]

    def candidates(self, edit_language: str, exclude: set[str]) -> Iterator[tuple[ParsedItem, dict[str, str]]]:
        """Every item that can be edited in `edit_language` (and is not in `exclude`), lazily in the seeded order,
        with its new target."""
        for index in self.order:
            if self.items[index].id in exclude:
                continue
            labels = self.new_labels(self.items[index], edit_language)
            if labels is not None:
                yield self.items[index], labels

    def retain_items(self, item: ParsedItem, n_retain: int) -> tuple[ParsedItem, ...]:
        """Up to `n_retain` items of other groups and other relations (unrelated facts), labelled in every evaluation
        language, fixed per item (fewer when the items hold fewer: the harness warns). With a single relation in the
        items, any other group's item is unrelated enough."""
        if n_retain == 0:
            return ()
        rng = random.Random(_digest(self.seed, "retain", item.id))
        single = len(self.table) == 1

        def excluded(i: int) -> bool:
            other = self.items[i]
            return other.group == item.group or other.id == item.id or (not single and other.relation == item.relation)

        return tuple(self.items[i] for i in sample_excluding(rng, self.retain_pool, n_retain, excluded))

    def neighbour_items(self, item: ParsedItem, n_neighbours: int) -> tuple[ParsedItem, ...]:
        """Up to `n_neighbours` items of the same relation about other subjects (other groups), labelled in every
        evaluation language, fixed per item (fewer when the relation has fewer)."""
        if n_neighbours == 0:
            return ()
        pool = self.by_relation.setdefault(
            item.relation, [i for i in self.retain_pool if self.items[i].relation == item.relation]
        )
        rng = random.Random(_digest(self.seed, "neighbour", item.id))
        eligible = [i for i in pool if self.items[i].group != item.group and self.items[i].id != item.id]
        return tuple(self.items[i] for i in rng.sample(eligible, min(n_neighbours, len(eligible))))


def _select(
    planner: _Planner, scorer: TargetScorer, edit_language: str, n_edits: int, exclude: set[str]
) -> list[tuple[ParsedItem, dict]]:
    """The first `n_edits` candidates (in `"gold"` mode: the first the unedited model gets wrong in `l_e`)."""
    candidates = planner.candidates(edit_language, exclude)
    if planner.new_target == "alternative":
        chosen = list(itertools.islice(candidates, n_edits))
        if len(chosen) < n_edits:
            raise ValueError(
                f"Only {len(chosen)} items can be edited in {edit_language!r} (they need a prompt in "
                f"{edit_language!r} and every evaluation language {planner.eval_languages}, and another object of "
                f"the same relation labelled in all of them), but n_edits={n_edits}."
            )
        return chosen
    chosen, seen = [], 0
    while len(chosen) < n_edits:
        chunk = list(itertools.islice(candidates, scorer.batch_size))
        if not chunk:
            break
        seen += len(chunk)
        base = scorer.base([(item, edit_language) for item, _ in chunk])
        chosen += [
            (item, labels)
            for (item, labels), before in zip(chunk, base, strict=True)
            if before != scorer.reference(item, edit_language, labels[edit_language])
        ]
    if len(chosen) < n_edits:
        warnings.warn(
            f"new_target='gold': the unedited model gets only {len(chosen)} of {seen} candidate items wrong in "
            f"{edit_language!r}; evaluating {len(chosen)} edits instead of n_edits={n_edits}.",
            stacklevel=4,
        )
    return chosen[:n_edits]


def _plan(planner: _Planner, scorer: TargetScorer, edit_languages: list[str], counts: _Counts, distinct: bool,
          locality: _LocalityPool | None = None, exclude: frozenset[str] = frozenset()):  # fmt: skip
    plans, used = [], set(exclude)
    for language in edit_languages:
        for item, labels in _select(planner, scorer, language, counts.edits, used if distinct else set(exclude)):
            used.add(item.id)
            retain = planner.retain_items(item, counts.retain)
            neighbours = planner.neighbour_items(item, counts.neighbours)
            extra = locality.draw(item, language) if locality is not None else ()
            plans.append(_EditPlan(f"{language}:{item.id}", item, language, dict(labels), retain, extra, neighbours))
    if not plans:
        raise ValueError(
            "new_target='gold' found no item that the unedited model gets wrong in the edit languages "
            f"{edit_languages}: there is nothing to fix. Use new_target='alternative'."
        )
    return plans


@dataclass(frozen=True)
class _Counts:
    """How many edits per edit language, and how many retain items and neighbours per edit."""

    edits: int
    retain: int
    neighbours: int


@dataclass
class _Readers:
    """Everything that reads answers: the headline scorer, the whole-sequence reader of the retain items (or None),
    whether the retain items are also read at their target, and the extra readings of the edit records."""

    scorer: TargetScorer
    sequence: SequenceScorer | None
    retain_at_target: bool
    extra: dict[str, TargetScorer]


def _gold_queries(pairs: Sequence[tuple[ParsedItem, str]]) -> list[tuple[ParsedItem, str, str]]:
    return [(item, language, item.targets[item.positions[language]]) for item, language in pairs]


def _append(records: dict, plan: _EditPlan, predictions, references, languages, kind: str) -> None:
    records["predictions"].extend(predictions)
    records["references"].extend(references)
    records["edit_ids"].extend([plan.edit_id] * len(references))
    records["edit_languages"].extend([plan.language] * len(references))
    records["eval_languages"].extend(languages)
    records["kinds"].extend([kind] * len(references))
    records["group_ids"].extend([plan.item.id] * len(references))


def _run_edit(model: Any, readers: _Readers, plan: _EditPlan, eval_languages: list[str], records: dict,
              extra_records: dict[str, dict], edit_options: dict[str, Any]) -> None:  # fmt: skip
    """Apply one edit; score its item in every evaluation language (`"edit"` records), its neighbours and retain
    items at their targets (`"neighbour"`, `"retain"`) and over their whole sequence (`"sequence"`); revert it."""
    scorer, sequence = readers.scorer, readers.sequence
    queries = [(plan.item, language, plan.labels[language]) for language in eval_languages]
    neighbour_pairs = [(item, language) for item in plan.neighbours for language in eval_languages]
    retain_pairs = [(item, language) for item in plan.retain for language in eval_languages]
    target_pairs = neighbour_pairs + (retain_pairs if readers.retain_at_target else [])
    batch = scorer.edit_batch(plan.item, plan.language, plan.labels[plan.language])
    edit = model.edit(batch, language=plan.language, retain_inputs=_locality_batch(scorer, plan), **edit_options)
    try:  # one scoring pass for the edit and the locality queries read at their target
        predictions = scorer.predict(queries + _gold_queries(target_pairs))
        read_sequences = sequence.predict(retain_pairs) if sequence is not None else []
        extra = {name: reader.predict(queries) for name, reader in readers.extra.items()}
    finally:
        edit.revert()
    n, m = len(queries), len(neighbour_pairs)
    _append(records, plan, predictions[:n], [scorer.reference(*q) for q in queries], eval_languages, "edit")
    _append(records, plan, predictions[n : n + m], scorer.base(neighbour_pairs),
            [lang for _, lang in neighbour_pairs], "neighbour")  # fmt: skip
    if readers.retain_at_target:
        _append(records, plan, predictions[n + m :], scorer.base(retain_pairs), [lang for _, lang in retain_pairs],
                "retain")  # fmt: skip
    if sequence is not None:
        _append(records, plan, read_sequences, sequence.base(retain_pairs), [lang for _, lang in retain_pairs],
                "sequence")  # fmt: skip
    for name, reader in readers.extra.items():
        _append(extra_records[name], plan, extra[name], [reader.reference(*q) for q in queries], eval_languages,
                "edit")  # fmt: skip


class _LocalityPool:
    """Unrelated inputs shown to an editor *at edit time* (`retain_inputs`; used by fine-tuning with a locality
    term): `n` items per edit drawn, seeded, from separate items (e.g. the training split), in the edit language."""

    def __init__(self, items: list[ParsedItem], n: int, seed: int, languages: set[str]) -> None:
        self.items, self.n, self.seed = items, n, seed
        labelled = [item.gold_labels() for item in items]  # once, not per edit
        self.by_language = {lang: [i for i, gold in enumerate(labelled) if lang in gold] for lang in languages}

    def draw(self, item: ParsedItem, language: str) -> tuple[ParsedItem, ...]:
        pool = [i for i in self.by_language[language] if self.items[i].group != item.group]
        if len(pool) < self.n:
            raise ValueError(f"Only {len(pool)} locality items have a target in {language!r}; n_locality={self.n}.")
        rng = random.Random(_digest(self.seed, "locality", language, item.id))
        return tuple(self.items[i] for i in rng.sample(pool, self.n))


def _locality_batch(scorer: TargetScorer, plan: _EditPlan) -> dict | None:
    if not plan.locality:
        return None
    return scorer.inputs_batch([(item, plan.language, item.gold_labels()[plan.language]) for item in plan.locality])


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise ValueError(f"`{name}` must be an int >= {low}, got {value!r}.")
    return int(value)


def _resolve_languages(model: Any, languages, edit_languages, eval_languages) -> tuple[list[str], list[str]]:
    adapter_languages = list(getattr(model.base_model, "languages", None) or [])
    if languages is None:
        if not adapter_languages:
            raise ValueError(
                "This adapter has no `languages` (e.g. editor='ft' or use_lime_mask=False without languages); pass "
                "languages=[...], the language codes to evaluate."
            )
        languages = adapter_languages
    languages = check_languages(languages)
    edit_languages = check_language_subset("edit_languages", edit_languages, languages)
    eval_languages = check_language_subset("eval_languages", eval_languages, languages)
    unknown = [language for language in edit_languages if adapter_languages and language not in adapter_languages]
    if unknown:
        raise ValueError(f"edit_languages {unknown} are unknown to this editor, which knows {adapter_languages}.")
    return edit_languages, eval_languages


def _locality_pool(items: Any, n: int, languages: set[str], seed: int) -> _LocalityPool | None:
    n = _check_int("n_locality", n, 0)
    if n == 0:
        return None
    if items is None:
        raise ValueError("n_locality > 0 needs `locality_items` (e.g. the training split) to draw them from.")
    return _LocalityPool(_parse_items(items, languages), n, seed, languages)


def _parse_items(items: Any, languages: set[str]) -> list[ParsedItem]:
    rows = items.to_list() if hasattr(items, "to_list") else list(items)
    if not rows:
        raise ValueError("`items` is empty; pass parallel items in the common schema (see hf_lime.data.schema).")
    parsed = [parse_item(row, languages) for row in rows]
    if len({item.id for item in parsed}) != len(parsed):
        raise ValueError("Item ids must be unique; `items` has duplicates.")
    return parsed


def evaluate_editor(
    model: Any,
    tokenizer: Any,
    items: Any,
    task: str,
    languages: Sequence[str] | None = None,
    edit_languages: Sequence[str] | None = None,
    eval_languages: Sequence[str] | None = None,
    n_edits: int = 20,
    n_retain: int = 8,
    n_neighbours: int = 0,
    new_target: str = "alternative",
    scoring: str = "open",
    distinct_facts: bool = False,
    seed: int = 0,
    label2id: Mapping[str, int] | None = None,
    max_length: int = 128,
    batch_size: int = 32,
    bootstrap: int = 0,
    progress: bool = True,
    return_records: bool = False,
    locality_items: Any = None,
    n_locality: int = 0,
    locality: str = "target",
    extra_scorings: Sequence[str] = (),
    candidates: Mapping[tuple[str, str], Sequence[str]] | None = None,
    exclude_ids: Collection[str] = (),
    cache_bytes: int = DEFAULT_MAX_BYTES,
    edit_options: Mapping[str, Any] | None = None,
    num_workers: int = 1,
    length_bucket: int = LENGTH_BUCKET,
) -> EvaluationResult:
    """Edit each chosen item in each edit language, score it and unrelated items in every language, revert.

    Per edit language `l_e`: the first `n_edits` usable items in a seeded order are edited one at a time (usable:
    a prompt in `l_e` and in every evaluation language, and a new target labelled in all of them). After each edit:

    - the same item in every evaluation language `l` gives an `"edit"` record, reference = the new target in `l`;
    - `n_neighbours` facts of the same relation about other subjects (other groups, fixed per item) in every `l`
      give `"neighbour"` records (`locality_same_relation`: the probes an edit is most likely to reach), reference =
      the unedited model's prediction (computed once, before any edit);
    - `n_retain` unrelated items (other groups and, when the items have several relations, other relations; fixed
      per item) in every `l` give `"retain"` records (`locality_other`), read at their target, and/or `"sequence"`
      records read over the whole prompt (`locality_sequence`), as `locality` says; reference as above.

    With `scoring="open"`, predictions are read at the target positions: LM prompts are encoded with the reference
    target so that the number of mask/continuation positions matches it (retain items with their own gold target),
    and a multi-token target counts only when every token is right; with `scoring="candidates"` the answer is the
    best-ranked object of the relation. The same seed gives the same items, targets and retain items for
    every edit language (a paired design), independent of Python's hash seed.

    Args:
        model (`PeftModel`): A model with a LIME adapter (any editor); only `model.edit` and forward passes are used.
        tokenizer (`PreTrainedTokenizerBase`): The model's tokenizer.
        items (`datasets.Dataset` or `Sequence[Mapping]`): Parallel items in the common schema.
        task (`str`): `"masked_lm"`, `"causal_lm"` or `"seq_cls"`.
        languages (`list[str]`, *optional*, defaults to the adapter's languages): The languages of the evaluation;
            required for adapters without languages (e.g. `editor="ft"`).
        edit_languages (`list[str]`, *optional*, defaults to `languages`): Languages the edits are made in.
        eval_languages (`list[str]`, *optional*, defaults to `languages`): Languages every edit is scored in.
        n_edits (`int`, *optional*, defaults to `20`): Edits per edit language.
        n_retain (`int`, *optional*, defaults to `8`): Unrelated items scored per edit (0: none).
        n_neighbours (`int`, *optional*, defaults to `0`): Facts of the edited relation about other subjects scored
            per edit (fewer when the relation has fewer; 0: none). Use a few (e.g. 5) whenever the items have several
            relations: locality on other relations says little, since an edit rarely reaches them.
        new_target (`str`, *optional*, defaults to `"alternative"`): `"alternative"` (another object of the same
            relation, or another class) or `"gold"` (only items the unedited model gets wrong in `l_e`, edited to
            their gold target; fewer than `n_edits` are used, with a warning, when fewer are wrong).
        scoring (`str`, *optional*, defaults to `"open"`): How an answer is read. `"open"`: the argmax over the
            whole vocabulary at the target positions (every target token must be right) or the class. `"candidates"`
            (masked LMs): the best of the relation's objects in that language (those of the evaluated items), each
            candidate scored by the mean log-probability of its tokens (mLAMA's typed querying; see
            `hf_lime.evaluation.candidates`).
        distinct_facts (`bool`, *optional*, defaults to `False`): `False` edits the same items in every edit
            language (a paired design across edit languages); `True` gives each edit language its own items (no
            fact is edited twice, so `len(edit_languages) × n_edits` distinct facts are edited).
        seed (`int`, *optional*, defaults to `0`): Seed of the item, target and retain selection (and bootstrap).
        label2id (`Mapping[str, int]`, *optional*): Class name to id for `"seq_cls"`; defaults to the model
            config's `label2id`.
        max_length (`int`, *optional*, defaults to `128`): Maximum tokens per example.
        batch_size (`int`, *optional*, defaults to `32`): Rows per scoring forward pass.
        bootstrap (`int`, *optional*, defaults to `0`): Bootstrap resamples for confidence intervals (`"ci"`).
        progress (`bool`, *optional*, defaults to `True`): Show a tqdm progress bar over the edits.
        return_records (`bool`, *optional*, defaults to `False`): Keep the raw records in `result.records`.
        locality_items (`datasets.Dataset` or `Sequence[Mapping]`, *optional*): Items to draw `n_locality` unrelated
            inputs from for each edit, given to the editor at edit time as `retain_inputs` (what fine-tuning with a
            locality term, `ft_loc_coef > 0`, keeps close to the base model; other editors ignore them). Use items
            kept apart from the evaluated ones (e.g. the training split): the scored retain items stay unseen.
        n_locality (`int`, *optional*, defaults to `0`): Locality inputs per edit (0: none).
        locality (`str`, *optional*, defaults to `"target"`): How a retain item is read. `"target"`: its answer at
            its target, as the edit records are read (`scoring`; `"retain"` records). `"sequence"` (masked LMs; the
            LiME reference's mLAMA protocol): its object slot filled with a span of masks of random length (drawn,
            seeded, from the object lengths of that language) and the argmax at every position of the sequence —
            the item counts as kept only if none of them moves (`"sequence"` records;
            `hf_lime.evaluation.scoring.SequenceScorer`). `"both"`: both readings. Neighbours are always read at
            their target.
        extra_scorings (`Sequence[str]`, *optional*, defaults to `()`): Further readings of the edit records (e.g.
            `("candidates",)` beside the headline `scoring="open"`), made while the same edit is applied; each gives
            `result.readings[name]`, an `EvaluationResult` of edit records only (its locality is NaN).
        candidates (`Mapping[tuple[str, str], Sequence[str]]`, *optional*): `(relation, language)` -> the objects a
            `"candidates"` reading ranks, e.g. every object of the relation (`candidate_table` of all splits, or
            mLAMA's candidate lists); the evaluated items' objects are always added. Defaults to those alone.
        exclude_ids (`Collection[str]`, *optional*): Item ids never edited (still usable as retain items or
            neighbours), e.g. the facts already edited in another language under the `"editing"` names protocol.
        cache_bytes (`int`, *optional*, defaults to `2**30`): Memory bound of the frozen-prefix cache
            (`hf_lime.prefix_cache`): every prompt's hidden states entering the first edited block are computed once
            and reused after every edit, since the blocks below it never change (same answers up to float
            rounding). `0` disables it; models it does not support run without it.
        length_bucket (`int`, *optional*, defaults to `8`): Scored prompts are padded on the right to a multiple of
            this many tokens and batched by padded width: fewer, fuller forwards after each edit (a prompt is still
            the same padded row every time, as the prefix cache needs). Right padding changes none of a prompt's
            outputs (up to float rounding); tokenizers that pad on the left are not padded (1). `1`: one length per
            forward. Recorded in `settings["length_bucket"]`.
        edit_options (`Mapping[str, Any]`, *optional*): Further keyword arguments of every `model.edit` call, e.g.
            `{"combine": "solve", "preserve": moments}` (`LimeModel.edit`); recorded in `settings["edit_options"]`
            (a tensor dict such as key moments as its layer count).
        num_workers (`int`, *optional*, defaults to `1`): Processes the edits are shared among (CPU models on
            POSIX systems; `hf_lime.evaluation.workers`): each forked worker edits, scores and reverts its share on
            its own copy-on-write copy of the model with one thread, and the records come back in the serial order.
            On a machine with `n` cores, `num_workers=n` scores more edits per second than one process with `n`
            threads. Falls back to 1 (with a warning) where forking is not possible, e.g. after CUDA is initialised.

    Before any edit, the unedited model answers every edit record too: `settings["pre_edit_floor"]` is the share it
    already gets right (overall, `reliability`, `transfer`), the edit success of an editor that changes nothing.

    Returns:
        [`EvaluationResult`]: `metrics` is exactly `compute_xl_edit_metrics(**records, bootstrap=bootstrap,
        seed=seed)`; `settings` records how it was obtained; `records` the inputs of `lime_xl_edit` when asked for;
        `readings` the `extra_scorings`.

    Raises:
        ValueError: On an unknown task, language or `new_target`, counts out of range, empty items, or too few items
            that have the requested languages.

    Example:

    ```python
    >>> from hf_lime.evaluation import evaluate_editor, format_table  # doctest: +SKIP
    >>> result = evaluate_editor(model, tokenizer, items, task="masked_lm", n_edits=20)  # doctest: +SKIP
    >>> result.metrics["reliability"], result.metrics["transfer"]  # doctest: +SKIP
    >>> print(format_table(result))  # doctest: +SKIP

    ```
    """
    check_task(task)
    for name in (scoring, *extra_scorings):
        if name not in SCORINGS:
            raise ValueError(f"Unknown scoring {name!r}; allowed values are {SCORINGS}.")
    if locality not in LOCALITY_PROTOCOLS:
        raise ValueError(f"Unknown locality {locality!r}; allowed values are {LOCALITY_PROTOCOLS}.")
    if locality != "target" and task != "masked_lm":
        raise ValueError(f"locality='sequence' reads masked-LM predictions over a sequence; task={task!r} needs "
                         "locality='target'.")  # fmt: skip
    if new_target not in NEW_TARGET_MODES:
        raise ValueError(f"Unknown new_target {new_target!r}; allowed values are {NEW_TARGET_MODES}.")
    if not callable(getattr(model, "edit", None)) or not hasattr(model, "base_model"):
        raise TypeError(f"`model` must be a PeftModel with a LIME adapter, got {type(model).__name__}.")
    counts = _Counts(_check_int("n_edits", n_edits, 1), _check_int("n_retain", n_retain, 0),
                     _check_int("n_neighbours", n_neighbours, 0))  # fmt: skip
    seed, batch_size = _check_int("seed", seed, 0), _check_int("batch_size", batch_size, 1)
    _check_int("bootstrap", bootstrap, 0)
    requested_workers = _check_int("num_workers", num_workers, 1)
    edit_languages, eval_languages = _resolve_languages(model, languages, edit_languages, eval_languages)
    parsed = _parse_items(items, set(edit_languages) | set(eval_languages))
    label2id = label2id if label2id is not None else model_label2id(model, task)
    bucket = length_bucket_of(tokenizer, _check_int("length_bucket", length_bucket, 1))
    scorer_args = (model, tokenizer, task, label2id, max_length, batch_size, parsed, candidates, bucket)
    readers = _Readers(
        scorer=make_scorer(scoring, *scorer_args),
        sequence=(SequenceScorer(model, tokenizer, parsed, seed, max_length, min(batch_size, 8))
                  if locality in ("sequence", "both") else None),
        retain_at_target=locality in ("target", "both"),
        extra={name: make_scorer(name, *scorer_args) for name in dict.fromkeys(extra_scorings)},
    )  # fmt: skip
    planner = _Planner(parsed, eval_languages, new_target, seed)
    pool = _locality_pool(locality_items, n_locality, set(edit_languages), seed)
    records: dict[str, list[str]] = {name: [] for name in RECORD_FIELDS}
    extra_records = {name: {field: [] for field in RECORD_FIELDS} for name in readers.extra}
    from tqdm.auto import tqdm

    with optional_prefix_cache(model, _check_int("cache_bytes", cache_bytes, 0)) as cache:
        plans = _plan(planner, readers.scorer, edit_languages, counts, distinct_facts, pool, frozenset(exclude_ids))
        _read_unedited(readers, plans, eval_languages)
        floors = {name: _pre_edit_floor(reader, plans, eval_languages) for name, reader in
                  {scoring: readers.scorer, **readers.extra}.items()}  # fmt: skip
        options = dict(edit_options or {})
        bar = tqdm(total=len(plans), desc="Editing", unit="edit", disable=not progress)
        run = functools.partial(_run_one, model, readers, eval_languages, options)
        workers = _workers(requested_workers, model, len(plans))
        if workers > 1:
            per_plan, counters = run_forked(run, plans, workers, on_result=bar.update,
                                            finish=lambda: _cache_counts(cache))  # fmt: skip
        else:
            per_plan, counters = [], []
            for plan in plans:
                per_plan.append(run(plan))
                bar.update()
        bar.close()
        for plan_records, plan_extra in per_plan:
            _extend(records, plan_records)
            for name, columns in plan_extra.items():
                _extend(extra_records[name], columns)
    settings = _settings(model, task, edit_languages, eval_languages, plans, counts, new_target, seed)
    _warn_short_retain(settings, counts)
    settings["prefix_cache"] = _cache_summary(cache, cache_bytes, counters)
    settings["num_workers"] = workers
    settings["length_bucket"] = bucket
    settings.update(distinct_facts=distinct_facts, n_facts=len({plan.item.id for plan in plans}),
                    n_locality=n_locality, locality=locality, extra_scorings=list(readers.extra),
                    candidates="every given object" if candidates is not None else "the evaluated items' objects",
                    n_excluded=len(set(exclude_ids)), edit_options=_described(edit_options))  # fmt: skip

    def result(name: str, columns: dict) -> EvaluationResult:
        metrics = compute_xl_edit_metrics(**columns, bootstrap=bootstrap, seed=seed)
        reading = {**settings, "scoring": name, "pre_edit_floor": floors[name]}
        return EvaluationResult(metrics=metrics, settings=reading, records=columns if return_records else None)

    headline = result(scoring, records)
    headline.readings = {name: result(name, columns) for name, columns in extra_records.items()}
    return headline


def _described(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """`edit_options` for settings.json: a tensor dict (key moments) as `"<n> layers"`."""
    return {
        key: f"{len(value)} layers" if isinstance(value, Mapping) else value for key, value in (options or {}).items()
    }


_CACHE_COUNTERS = ("hits", "misses", "bypassed", "invalidations", "evictions")


def _cache_counts(cache: PrefixCache | None) -> dict[str, int] | None:
    return None if cache is None else {name: getattr(cache, name) for name in _CACHE_COUNTERS}


def _cache_summary(cache: PrefixCache | None, max_bytes: int, workers: Sequence[dict | None] = ()) -> dict | None:
    """The cache's counters for settings.json: the parent's (planning, unedited reads) plus each worker's edits
    beyond what it inherited from the parent at the fork."""
    if cache is None:
        return None
    parent = _cache_counts(cache)
    counts = dict(parent)
    for worker in workers:
        for name in _CACHE_COUNTERS:
            counts[name] += (worker or parent)[name] - parent[name]
    return {"first_block": cache.first_block, "max_bytes": max_bytes, **counts}


def _workers(requested: int, model: Any, n_plans: int) -> int:
    """How many processes the edits run in: `requested`, unless forking is impossible here (then 1, logged)."""
    if requested <= 1 or n_plans <= 1:
        return 1
    supported, reason = fork_supported()
    if not supported:
        logger.warning("num_workers=%d ignored, the edits run in this process: %s", requested, reason)
        return 1
    if next(model.parameters()).device.type != "cpu":
        logger.warning("num_workers=%d ignored: the model is not on the CPU", requested)
        return 1
    return min(requested, n_plans)


def _run_one(model: Any, readers: _Readers, eval_languages: list[str], options: dict, plan: _EditPlan):
    """One edit's records (and its extra readings' records), in fresh columns (a worker's JSON result)."""
    records: dict[str, list] = {name: [] for name in RECORD_FIELDS}
    extra = {name: {field: [] for field in RECORD_FIELDS} for name in readers.extra}
    _run_edit(model, readers, plan, eval_languages, records, extra, options)
    return records, extra


def _extend(columns: dict[str, list], more: Mapping[str, list]) -> None:
    for name in RECORD_FIELDS:
        columns[name].extend(more[name])


def _warn_short_retain(settings: dict, counts: _Counts) -> None:
    if settings["retain_per_edit"] < counts.retain:
        warnings.warn(
            f"Some edits have fewer than n_retain={counts.retain} unrelated facts (other subjects of other relations, "
            f"labelled in every evaluation language): {settings['retain_per_edit']:.2f} per edit on average. Their "
            "locality_other is read on those there are; add items or lower n_retain.",
            stacklevel=3,
        )


def _read_unedited(readers: _Readers, plans: list[_EditPlan], eval_languages: list[str]) -> None:
    """The unedited model's answers to every locality probe, cached in the readers before any edit."""
    retain = [(item, lang) for plan in plans for item in plan.retain for lang in eval_languages]
    neighbours = [(item, lang) for plan in plans for item in plan.neighbours for lang in eval_languages]
    readers.scorer.base(neighbours + (retain if readers.retain_at_target else []))
    if readers.sequence is not None:
        readers.sequence.base(retain)


def _pre_edit_floor(scorer: TargetScorer, plans: list[_EditPlan], eval_languages: list[str]) -> dict[str, float]:
    """The share of edit records the unedited model already gets right (its answer is the new target): what edit
    success would be for an editor that changes nothing. Overall, on the diagonal and off it."""
    queries = {(plan.item.id, language): (plan.item, language, plan.labels[language]) for plan in plans
               for language in eval_languages}  # fmt: skip
    keys = list(queries)
    answers = scorer.predict([queries[key] for key in keys])
    right = {key: answer == scorer.reference(*queries[key]) for key, answer in zip(keys, answers, strict=True)}
    hits: dict[str, list[bool]] = {"edit_success": [], "reliability": [], "transfer": []}
    for plan in plans:
        for language in eval_languages:
            hit = right[(plan.item.id, language)]
            hits["edit_success"].append(hit)
            hits["reliability" if language == plan.language else "transfer"].append(hit)
    return {name: (sum(v) / len(v) if v else float("nan")) for name, v in hits.items()}


def _settings(model, task, edit_languages, eval_languages, plans, counts: _Counts, new_target, seed) -> dict:
    config = getattr(model.base_model, "lime_config", None)
    return {
        "task": task,
        "editor": getattr(config, "editor", None),
        "use_lime_mask": getattr(config, "use_lime_mask", None),
        "edit_languages": list(edit_languages),
        "eval_languages": list(eval_languages),
        "n_edits": counts.edits,
        "n_retain": counts.retain,
        "n_neighbours": counts.neighbours,
        "neighbours_per_edit": (sum(len(p.neighbours) for p in plans) / len(plans)) if plans else 0.0,
        "retain_per_edit": (sum(len(p.retain) for p in plans) / len(plans)) if plans else 0.0,
        "new_target": new_target,
        "seed": seed,
        "edits_per_language": {lang: sum(p.language == lang for p in plans) for lang in edit_languages},
    }
