"""Reading JSON Lines files of objects, with errors that name the file and the line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


def iter_jsonl_objects(path: str | Path, bad_json: str = "malformed JSON") -> Iterator[tuple[int, dict]]:
    """Yield `(line_number, object)` for each non-blank line of `path`.

    Args:
        path (`str` or `Path`): The file.
        bad_json (`str`, *optional*, defaults to `"malformed JSON"`): How the error names a line that is not JSON.

    Raises:
        ValueError: `"<path>, line <n>: ..."` for a line that is not JSON or not a JSON object.
    """
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {number}: {bad_json} ({error.msg}).") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}.")
            yield number, record
