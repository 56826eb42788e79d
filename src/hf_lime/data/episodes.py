"""Cross-lingual training episodes for learned editors (LiME, https://huggingface.co/papers/2205.12677).

Each episode holds three lists of examples:

- ``edit``: ``n_edit`` items, each in a language sampled from ``edit_languages``, with the *new* target in
  that language (the edit request ``(x^(l_e), y_new^(l_e))``);
- ``update``: the same items, each in a language sampled from ``update_languages`` (it may equal the edit
  language), with the same new target expressed in that language (what the edited model must now say);
- ``retain``: ``n_retain`` other items in languages sampled from ``retain_languages``, with their own gold target
  (only used to place the target tokens; locality compares with the base model's own predictions).

An example is a plain dict ``{"prompt", "pair", "target", "language", "lang_id", "item_id"}`` where ``lang_id`` is
the index of ``language`` in the fixed ``languages`` list: the row of the language mask, which must be the same
list that is saved in the adapter config.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..languages import check_language_subset, check_languages
from ..tasks import check_task
from .encoding import encode_example, pad_batch
from .items import ParsedItem, parse_item, target_table  # noqa: F401  (re-exported)

NEW_TARGET_MODES = ("alternative", "gold")
PRESETS = ("monolingual", "pairwise", "all")
PARTS = ("edit", "update", "retain")


def _episode_rng(seed: int, index: int) -> random.Random:
    """A generator that depends only on (seed, index): never on Python's string hash seed."""
    digest = hashlib.sha256(f"hf_lime.episodes:{seed}:{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def sample_excluding(rng: random.Random, pool: Sequence[int], k: int, blocked: Callable[[int], bool]) -> list[int]:
    """Up to `k` distinct entries of `pool` for which `blocked` is false (rejection sampling, then a full scan)."""
    chosen: list[int] = []
    seen: set[int] = set()
    for _ in range(8 * k + 32):
        if len(chosen) == k:
            return chosen
        candidate = pool[rng.randrange(len(pool))]
        if candidate not in seen and not blocked(candidate):
            chosen.append(candidate)
        seen.add(candidate)
    rest = [candidate for candidate in pool if candidate not in chosen and not blocked(candidate)]
    return chosen + rng.sample(rest, min(k - len(chosen), len(rest)))


def episode_languages(
    preset: str, languages: Sequence[str], edit_language: str = "en", pair: Sequence[str] | None = None
) -> dict[str, list[str]]:
    """Edit / update / retain languages of the paper's training settings.

    Args:
        preset (`str`): ``"monolingual"`` (``edit_language`` everywhere), ``"pairwise"`` (the two languages of
            `pair` everywhere) or ``"all"`` (every language everywhere).
        languages (`Sequence[str]`): the fixed language list.
        edit_language (`str`, *optional*, defaults to `"en"`): the language of ``"monolingual"``, and the first
            language of ``"pairwise"`` when `pair` is not given.
        pair (`Sequence[str]`, *optional*, defaults to `None`): the two languages of ``"pairwise"``; defaults to
            `edit_language` and the first other language of `languages`.

    Returns:
        `dict[str, list[str]]`: keyword arguments ``edit_languages``, ``update_languages``, ``retain_languages``
        for `EpisodeDataset`.
    """
    languages = list(languages)
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; allowed presets are {PRESETS}.")
    if preset == "all":
        chosen = languages
    elif preset == "monolingual":
        chosen = check_language_subset("edit_language", [edit_language], languages)
    else:
        if pair is None:
            others = [lang for lang in languages if lang != edit_language]
            if not others:
                raise ValueError(f"The 'pairwise' preset needs a second language; languages={languages}.")
            pair = [edit_language, others[0]]
        if len(pair) != 2 or pair[0] == pair[1]:
            raise ValueError(f"pair must name two different languages, got {pair!r}.")
        chosen = check_language_subset("pair", list(pair), languages)
    return {"edit_languages": list(chosen), "update_languages": list(chosen), "retain_languages": list(chosen)}


def _check_counts(n_edit: int, n_retain: int, num_episodes: int | None, new_target: str) -> None:
    for name, value, low in (("n_edit", n_edit, 1), ("n_retain", n_retain, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}.")
    if num_episodes is not None and (not isinstance(num_episodes, int) or num_episodes < 1):
        raise ValueError(f"num_episodes must be None or an int >= 1, got {num_episodes!r}.")
    if new_target not in NEW_TARGET_MODES:
        raise ValueError(f"Unknown new_target {new_target!r}; allowed values are {NEW_TARGET_MODES}.")


class EpisodeDataset(torch.utils.data.Dataset):
    """Cross-lingual editing episodes over parallel items (mLAMA facts, XNLI pairs, CLDR facts).

    New targets (``new_target="alternative"``): for facts, another object of the *same relation* (a different
    ``target_id``), written with that object's own label in each language, taken from the other items of the
    relation; only objects labelled in both the sampled edit and update languages are chosen. For XNLI, another
    class than the gold one (its label name), found the same way. Items without any possible alternative are
    skipped. ``new_target="gold"`` keeps the item's own target (to evaluate fixing mistakes).

    Which items are used: an item is edited only if it has an edit language, an update language and a new target
    labelled in both; it is retained only if it has a retain language with a non-empty target. Item languages
    that are not in `languages` are ignored.

    Episode ``i`` is a pure function of ``(seed, i)``: its first edited item is the ``i % N``-th usable item (so
    ``N`` episodes edit every usable item once), everything else is drawn from a generator seeded by a SHA-256
    digest of ``(seed, i)``. Python's string hash seed plays no part.

    Args:
        items (`datasets.Dataset` or `Sequence[Mapping]`): rows with ``id``, ``source``, ``relation``, ``group``,
            ``target_id`` and the aligned lists ``languages``, ``prompts``, ``pairs``, ``targets``.
        languages (`Sequence[str]`): the fixed, ordered language list; ``lang_id`` is an index into it.
        edit_languages (`Sequence[str]`, *optional*, defaults to `None`): languages edits are shown in (all).
        update_languages (`Sequence[str]`, *optional*, defaults to `None`): languages the edit is supervised in (all).
        retain_languages (`Sequence[str]`, *optional*, defaults to `None`): languages of retained items (all).
        n_edit (`int`, *optional*, defaults to `1`): edited items per episode.
        n_retain (`int`, *optional*, defaults to `4`): retained items per episode.
        n_update (`int`, *optional*, defaults to `1`): update languages per edited item: the same item with its new
            target in up to this many distinct languages (the first drawn as with one; more cross-lingual supervision
            per edit, at the cost of more rows in the post-edit forward).
        num_episodes (`int`, *optional*, defaults to `None`): dataset length; `None` means one per usable item.
        seed (`int`, *optional*, defaults to `0`): the sampling seed.
        new_target (`str`, *optional*, defaults to `"alternative"`): ``"alternative"`` or ``"gold"``.

    Example:

    ```python
    >>> episodes = EpisodeDataset(items, languages=["en", "fr", "de"], n_edit=1, n_retain=2)  # doctest: +SKIP
    >>> episodes[0]["edit"][0]["language"], episodes[0]["update"][0]["item_id"]  # doctest: +SKIP
    ('fr', 'P19-0042')

    ```
    """

    def __init__(
        self,
        items: Any,
        languages: Sequence[str],
        edit_languages: Sequence[str] | None = None,
        update_languages: Sequence[str] | None = None,
        retain_languages: Sequence[str] | None = None,
        n_edit: int = 1,
        n_retain: int = 4,
        num_episodes: int | None = None,
        seed: int = 0,
        new_target: str = "alternative",
        n_update: int = 1,
    ) -> None:
        if isinstance(n_update, bool) or not isinstance(n_update, int) or n_update < 1:
            raise ValueError(f"n_update must be an int >= 1, got {n_update!r}.")
        self.n_update = n_update
        self.languages = check_languages(languages)
        self.edit_languages = check_language_subset("edit_languages", edit_languages, self.languages)
        self.update_languages = check_language_subset("update_languages", update_languages, self.languages)
        self.retain_languages = check_language_subset("retain_languages", retain_languages, self.languages)
        _check_counts(n_edit, n_retain, num_episodes, new_target)
        self.n_edit, self.n_retain, self.num_episodes = n_edit, n_retain, num_episodes
        self.seed, self.new_target = int(seed), new_target
        self._lang_ids = {lang: i for i, lang in enumerate(self.languages)}
        rows = items.to_list() if hasattr(items, "to_list") else list(items)
        self._items = [parse_item(row, set(self.languages)) for row in rows]
        ids = [item.id for item in self._items]
        if len(set(ids)) != len(ids):
            raise ValueError("Item ids must be unique; found duplicates.")
        self._table = target_table(self._items)
        self._edit_pool = [i for i, item in enumerate(self._items) if self._editable(item)]
        self._retain_pool = [i for i, item in enumerate(self._items) if self._retain_langs(item)]
        self._check_pools()

    def _check_pools(self) -> None:
        if len(self._edit_pool) < self.n_edit:
            raise ValueError(
                f"Only {len(self._edit_pool)} items can be edited (they need an edit language in "
                f"{self.edit_languages}, an update language in {self.update_languages} and a new target labelled in "
                f"both), but n_edit={self.n_edit}."
            )
        if len(self._retain_pool) < self.n_edit + self.n_retain:
            raise ValueError(
                f"Only {len(self._retain_pool)} items have a retain language in {self.retain_languages}; "
                f"n_edit + n_retain = {self.n_edit + self.n_retain} are needed."
            )

    @property
    def usable_item_ids(self) -> list[str]:
        """Ids of the items that episodes can edit, in dataset order."""
        return [self._items[i].id for i in self._edit_pool]

    def _candidates(self, item: ParsedItem) -> list[tuple[str, dict[str, str]]]:
        if self.new_target == "gold":
            return [(item.target_id, item.gold_labels())]
        return [(tid, labels) for tid, labels in self._table.get(item.relation, []) if tid != item.target_id]

    def _edit_langs(self, item: ParsedItem) -> tuple[list[str], list[str]]:
        edit = [lang for lang in self.edit_languages if lang in item.positions]
        update = [lang for lang in self.update_languages if lang in item.positions]
        return edit, update

    def _editable(self, item: ParsedItem) -> bool:
        edit, update = self._edit_langs(item)
        return any(
            any(lang in labels for lang in edit) and any(lang in labels for lang in update)
            for _, labels in self._candidates(item)
        )

    def _retain_langs(self, item: ParsedItem) -> list[str]:
        gold = item.gold_labels()
        return [lang for lang in self.retain_languages if lang in gold]

    def __len__(self) -> int:
        return self.num_episodes if self.num_episodes is not None else len(self._edit_pool)

    def __getitem__(self, index: int) -> dict[str, list[dict[str, Any]]]:
        if not isinstance(index, int):
            raise TypeError(f"Episode index must be an int, got {type(index).__name__}.")
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"Episode index {index} out of range for {len(self)} episodes.")
        rng = _episode_rng(self.seed, index)
        first = self._edit_pool[index % len(self._edit_pool)]
        others = sample_excluding(rng, self._edit_pool, self.n_edit - 1, lambda i: i == first)
        edited = [first, *others]
        episode: dict[str, list[dict[str, Any]]] = {"edit": [], "update": [], "retain": []}
        for item_index in edited:
            edit, updates = self._edit_pair(self._items[item_index], rng)
            episode["edit"].append(edit)
            episode["update"].extend(updates)
        episode["retain"] = self._retain_examples(edited, rng)
        return episode

    def _edit_pair(self, item: ParsedItem, rng: random.Random) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Sample (edit language, update language(s), new target) for an editable item."""
        edit_langs, update_langs = self._edit_langs(item)
        candidates = self._candidates(item)
        # The first draw is uniform over languages; later pairs are tried only when the first has no target.
        for edit_lang in rng.sample(edit_langs, len(edit_langs)):
            for update_lang in rng.sample(update_langs, len(update_langs)):
                labelled = [labels for _, labels in candidates if edit_lang in labels and update_lang in labels]
                if labelled:
                    labels = rng.choice(labelled)
                    updates = [update_lang]
                    if self.n_update > 1:
                        more = [lang for lang in update_langs if lang in labels and lang != update_lang]
                        updates += rng.sample(more, min(self.n_update - 1, len(more)))
                    return (
                        item.example(edit_lang, labels[edit_lang], self._lang_ids[edit_lang]),
                        [item.example(lang, labels[lang], self._lang_ids[lang]) for lang in updates],
                    )
        raise AssertionError(f"Item {item.id!r} was marked editable but has no labelled new target.")

    def _retain_examples(self, edited: list[int], rng: random.Random) -> list[dict[str, Any]]:
        """Items other than the edited ones, preferably not sharing their group (e.g. subject or premise)."""
        edited_ids = set(edited)
        edited_groups = {self._items[i].group for i in edited}
        chosen = sample_excluding(
            rng, self._retain_pool, self.n_retain, lambda i: i in edited_ids or self._items[i].group in edited_groups
        )
        if len(chosen) < self.n_retain:
            taken = edited_ids | set(chosen)
            chosen += sample_excluding(rng, self._retain_pool, self.n_retain - len(chosen), lambda i: i in taken)
        examples = []
        for item_index in chosen:
            item = self._items[item_index]
            language = rng.choice(self._retain_langs(item))
            examples.append(item.example(language, item.targets[item.positions[language]], self._lang_ids[language]))
        return examples


class EpisodeCollator:
    """Encode and pad a list of episodes into ``{"edit": batch, "update": batch, "retain": batch}``.

    Each batch is `pad_batch` output plus ``lang_ids`` (one per row, a `torch.LongTensor`). The examples of all
    episodes are concatenated per part. Retain batches carry labels too: for the LM tasks they mark the target
    positions where locality (KL to the base model) is measured.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): the model's tokenizer.
        task (`str`): one of ``"masked_lm"``, ``"seq_cls"``, ``"causal_lm"``.
        label2id (`Mapping[str, int]`, *optional*, defaults to `None`): class name -> id for ``seq_cls``.
        max_length (`int`, *optional*, defaults to `128`): maximum tokens per example.

    Example:

    ```python
    >>> collator = EpisodeCollator(tokenizer, "masked_lm")  # doctest: +SKIP
    >>> batch = collator([episodes[0], episodes[1]])  # doctest: +SKIP
    >>> batch["edit"]["input_ids"].shape, batch["edit"]["lang_ids"]  # doctest: +SKIP

    ```
    """

    def __init__(
        self, tokenizer: Any, task: str, label2id: Mapping[str, int] | None = None, max_length: int = 128
    ) -> None:
        check_task(task)
        self.tokenizer, self.task, self.label2id, self.max_length = tokenizer, task, label2id, max_length

    def _encode(self, example: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return encode_example(
                self.tokenizer,
                self.task,
                example["prompt"],
                example["target"],
                pair=example.get("pair") or None,
                label2id=self.label2id,
                max_length=self.max_length,
            )
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"Cannot encode item {example.get('item_id')!r} ({example.get('language')}): {error}"
            ) from error

    def _collate(self, examples: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        batch = pad_batch(self.tokenizer, [self._encode(example) for example in examples])
        batch["lang_ids"] = torch.tensor([int(example["lang_id"]) for example in examples], dtype=torch.long)
        return batch

    def __call__(self, episodes: Sequence[Mapping[str, Sequence[Mapping[str, Any]]]]) -> dict[str, dict]:
        if not episodes:
            raise ValueError("EpisodeCollator needs at least one episode.")
        batches = {}
        for part in PARTS:
            if any(part not in episode for episode in episodes):
                raise ValueError(f"Every episode needs the keys {PARTS}; one lacks {part!r}.")
            batches[part] = self._collate([example for episode in episodes for example in episode[part]])
        return batches
