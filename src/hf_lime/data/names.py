"""Whose names fill a parallel item's prompts and answers: the names protocol of cross-lingual fact editing.

A fact such as (Azerbaijan, capital, Baku) is asked in every language's template. Whose names fill it is a protocol
choice that decides what "transfer" means:

- `"own"` (the default): each language's own names (`阿塞拜疆的首都是[Y]。` → `巴库`): what a user has, and the
  strict test of an edit that must carry into every language's own words.
- `"editing"`: the *editing* language's subject and object names in every template, which is the LiME reference's
  default (`use_translated_labels: False`): an edit made in French is scored on German and Chinese templates filled
  with the French names. The items then depend on the editing language; `hf_lime.evaluation.evaluate_editing_protocol`
  runs it from one dataset per editing language.
- a language code (e.g. `"en"`): that language's names everywhere, the same for every editing language (the answer
  is the same string in every language: transfer is then close to paraphrase).
"""

from __future__ import annotations

from collections.abc import Sequence

LABEL_PROTOCOLS = ("own", "editing")
"""The names protocols besides a fixed language code."""


def check_label_language(value: str | None, languages: Sequence[str]) -> str:
    """The names protocol `value` as `"own"`, `"editing"` or one of `languages` (`None` means `"own"`).

    Raises:
        ValueError: For anything else, saying what is allowed.
    """
    if value is None:
        return "own"
    if not isinstance(value, str) or (value not in LABEL_PROTOCOLS and value not in languages):
        raise ValueError(
            f"Unknown label_language {value!r}: use 'own' (each language's own names), 'editing' (the editing "
            f"language's names in every template, the LiME reference's default) or one of the languages "
            f"{list(languages)}."
        )
    return value


def names_language(value: str | None, languages: Sequence[str]) -> str | None:
    """The language whose names fill every template for a loader (`None`: each language's own names).

    Raises:
        ValueError: For an unknown value, and for `"editing"`, which a single dataset cannot hold (its names depend on
            the editing language): load one dataset per editing language with `label_language=<that language>` and
            evaluate them with `hf_lime.evaluation.evaluate_editing_protocol`.
    """
    protocol = check_label_language(value, languages)
    if protocol == "editing":
        raise ValueError(
            "label_language='editing' depends on the editing language, so one dataset cannot hold it: load one "
            "dataset per editing language with label_language=<that language> and evaluate them with "
            "hf_lime.evaluation.evaluate_editing_protocol."
        )
    return None if protocol == "own" else protocol
