"""The one validator of language lists and selections.

A language list is ordered: its order maps languages to mask rows (`LimeConfig.languages`) and to the ids that
episodes carry (`EpisodeDataset`). Every place that takes a list — the config, a saved adapter, the data loaders,
the episode dataset, the evaluation harness — checks it here; past that boundary languages travel as ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def check_languages(
    languages: Any, *, name: str = "languages", source: str | None = None, allow_empty: bool = False
) -> list[str]:
    """
    Validate an ordered list of language codes and return it as a list.

    Args:
        languages (`Sequence[str]`): Language codes, e.g. `["en", "fr", "zh"]`.
        name (`str`, *optional*, defaults to `"languages"`): The argument's name, for messages.
        source (`str`, *optional*): Where the list comes from (e.g. a file name), for messages.
        allow_empty (`bool`, *optional*, defaults to `False`): Accept an empty list.

    Returns:
        `list[str]`: the same codes in the same order.

    Raises:
        `TypeError`: not a list or tuple of strings. `ValueError`: empty (unless allowed), a blank code, or a
        language listed twice.

    Example:

    ```python
    >>> from hf_lime.languages import check_languages
    >>> check_languages(("en", "zh"))
    ['en', 'zh']
    >>> check_languages(["en", "en"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: `languages` has duplicate languages ['en']; list each language once ...

    ```
    """
    where = f" in {source}" if source else ""
    if isinstance(languages, str):
        raise TypeError(
            f"`{name}`{where} must be a list of language codes such as ['en', 'fr'], not the string {languages!r}."
        )
    if not isinstance(languages, (list, tuple)):
        raise TypeError(f"`{name}`{where} must be a list of language codes such as ['en', 'fr'], got {languages!r}.")
    languages = list(languages)
    if not all(isinstance(lang, str) for lang in languages):
        raise TypeError(f"`{name}`{where} must be a list of non-empty language codes (strings), got {languages!r}.")
    if not all(lang.strip() for lang in languages):
        raise ValueError(f"`{name}`{where} must be a list of non-empty language codes, got {languages!r}.")
    if not languages and not allow_empty:
        raise ValueError(f"`{name}`{where} is empty; give at least one language code, e.g. ['en', 'fr'].")
    duplicates = sorted({lang for lang in languages if languages.count(lang) > 1})
    if duplicates:
        raise ValueError(
            f"`{name}`{where} has duplicate languages {duplicates}; list each language once (the order maps "
            "languages to mask rows)."
        )
    return languages


def check_language_subset(name: str, selected: Sequence[str] | None, languages: Sequence[str]) -> list[str]:
    """
    A selection among `languages` (`None` selects them all), deduplicated in order.

    Raises:
        `TypeError`: a string instead of a list. `ValueError`: a language outside `languages`, or none selected.
    """
    if selected is None:
        return list(languages)
    if isinstance(selected, str):
        raise TypeError(f"`{name}` must be a list of language codes, got the string {selected!r}.")
    unknown = [lang for lang in selected if lang not in languages]
    if unknown:
        raise ValueError(f"`{name}` contains {unknown}, which are not in languages={list(languages)}.")
    selected = list(dict.fromkeys(selected))
    if not selected:
        raise ValueError(f"`{name}` must name at least one language.")
    return selected
