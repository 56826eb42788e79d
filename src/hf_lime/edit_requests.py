"""Edit requests for `LimeEditor.edit_many` and `hf-lime edit --file`: parsed and checked before anything is edited.

A request is a `(prompt, answer, language)` tuple or a mapping with exactly the keys `prompt`, `answer` and `language`
(one JSON object per line in a `.jsonl` file). `prompt` is a string (a `(premise, hypothesis)` pair of strings for
classifiers), `answer` a string (or a class id for classifiers), `language` a code (or `None` for an editor without
languages).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .jsonl import iter_jsonl_objects

REQUEST_KEYS = ("prompt", "answer", "language")


@dataclass(frozen=True)
class EditRequest:
    """One edit: make `prompt` give `answer`, editing in `language`."""

    prompt: str | tuple[str, str]
    answer: str | int
    language: str | None


class RequestError(ValueError):
    """A bad request: `index` is its position in the list (`reason` the message without the position)."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"Request {index}: {reason}")
        self.index, self.reason = index, reason


def parse_request(request: Any, index: int = 0) -> EditRequest:
    """
    One request (a tuple, a mapping or an [`EditRequest`]) as an [`EditRequest`], its fields' types checked.

    Raises:
        RequestError: not a 3-tuple or a mapping with exactly the keys `prompt`, `answer`, `language`; or a field
            of the wrong type.
    """
    if isinstance(request, EditRequest):
        prompt, answer, language = request.prompt, request.answer, request.language
    elif isinstance(request, Mapping):
        missing = [key for key in REQUEST_KEYS if key not in request]
        unknown = sorted(str(key) for key in request if key not in REQUEST_KEYS)
        if missing or unknown:
            problem = f"missing key(s) {missing}" if missing else f"unknown key(s) {unknown}"
            raise RequestError(index, f"{problem}; a request has exactly the keys {list(REQUEST_KEYS)}.")
        prompt, answer, language = (request[key] for key in REQUEST_KEYS)
    elif isinstance(request, (tuple, list)) and len(request) == 3:
        prompt, answer, language = request
    else:
        raise RequestError(
            index, f"a request is a (prompt, answer, language) tuple or a dict with keys {list(REQUEST_KEYS)}, got "
            f"{request!r}."
        )  # fmt: skip
    return EditRequest(_prompt(prompt, index), _answer(answer, index), _language(language, index))


def _prompt(prompt: Any, index: int) -> str | tuple[str, str]:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (tuple, list)) and len(prompt) == 2 and all(isinstance(p, str) for p in prompt):
        return (prompt[0], prompt[1])
    raise RequestError(
        index, f"`prompt` must be a string (or a [premise, hypothesis] pair of strings), got {prompt!r}."
    )


def _answer(answer: Any, index: int) -> str | int:
    if isinstance(answer, str) or (isinstance(answer, int) and not isinstance(answer, bool)):
        return answer
    raise RequestError(index, f"`answer` must be a string (or a class id for classifiers), got {answer!r}.")


def _language(language: Any, index: int) -> str | None:
    if language is None or (isinstance(language, str) and language.strip()):
        return language
    raise RequestError(index, f"`language` must be a language code such as 'en' (or null), got {language!r}.")


def parse_requests(requests: Any) -> list[EditRequest]:
    """
    Every request parsed (see [`parse_request`]), and no two with the same prompt and different answers.

    Raises:
        RequestError: the first bad request, by index. TypeError: `requests` is not a non-empty list.
    """
    if isinstance(requests, (str, bytes, Mapping)) or not isinstance(requests, Sequence) or not requests:
        raise TypeError(f"`requests` must be a non-empty list of edit requests, got {requests!r}.")
    parsed = [parse_request(request, index) for index, request in enumerate(requests)]
    first: dict[Any, int] = {}
    for index, request in enumerate(parsed):
        earlier = first.setdefault(request.prompt, index)
        if parsed[earlier].answer != request.answer:
            raise RequestError(
                index, f"its prompt {request.prompt!r} is also request {earlier}'s, with another answer "
                f"({parsed[earlier].answer!r} vs {request.answer!r}); at most one of them can hold."
            )  # fmt: skip
    return parsed


def check_request_languages(requests: Sequence[EditRequest], languages: Sequence[str]) -> None:
    """Every request's language among `languages` (or `None` when there are none)."""
    for index, request in enumerate(requests):
        if languages and request.language not in languages:
            raise RequestError(index, f"unknown language {request.language!r}; this editor knows {list(languages)}.")
        if not languages and request.language is not None:
            raise RequestError(index, f"this editor has no languages; pass language=None, not {request.language!r}.")


def read_requests_file(path: str | os.PathLike) -> tuple[list[EditRequest], list[int]]:
    """
    The requests of a JSON Lines file (one object per line, blank lines skipped) and the line number of each.

    Raises:
        ValueError: `"<path>, line <n>: <what is wrong>"` for the first bad line (invalid JSON, not an object,
            a missing or unknown key, a wrong type, a prompt repeated with another answer), or an empty file.
        OSError: the file cannot be read.
    """
    path = Path(path)
    requests, lines = [], []
    for number, value in iter_jsonl_objects(path, bad_json="invalid JSON"):
        requests.append(value)
        lines.append(number)
    if not requests:
        raise ValueError(f"{path} holds no edit requests (one JSON object per line with {list(REQUEST_KEYS)}).")
    try:
        return parse_requests(requests), lines
    except RequestError as error:
        raise ValueError(f"{path}, line {lines[error.index]}: {error.reason}") from error
