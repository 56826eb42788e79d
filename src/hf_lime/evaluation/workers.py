"""Independent jobs shared among forked CPU worker processes, one thread each, results back as JSON.

The evaluation harness edits, scores and reverts one fact at a time; the edits do not depend on one another, so on a
machine with several cores `evaluate_editor(..., num_workers=n)` hands them to `n` forked copies of the process. A
forked child shares the parent's model, tokenizer and caches copy-on-write: an edit it applies changes its own copy
only. Each child runs with one intra-op thread (several small products in parallel processes use the cores better
than one process's threads on products of a few rows, and a forked child must not reuse the parent's OpenMP pool).
Results come back over pipes as JSON lines (never pickled) and are returned in the order of the jobs, so the
records are those of the serial loop.

Fork is POSIX-only and unsafe once CUDA is initialised: `fork_supported` says when it can be used; callers fall back
to the serial loop otherwise.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

logger = logging.getLogger(__name__)


def fork_supported() -> tuple[bool, str]:
    """Whether `run_forked` can fork here, and why not when it cannot."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return False, f"the 'fork' start method is not available on {sys.platform}"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return False, "CUDA is initialised in this process (a forked child cannot use it)"
    return True, ""


def run_forked(
    job: Callable[[Any], Any],
    jobs: Sequence[Any],
    num_workers: int,
    on_result: Callable[[], None] | None = None,
    finish: Callable[[], Any] | None = None,
) -> tuple[list[Any], list[Any]]:
    """Run `job(item)` for every item of `jobs` in `num_workers` forked processes.

    Worker `w` takes ``jobs[w::num_workers]``. Each result must be JSON-serialisable.

    Args:
        job (`Callable`): called in a child on one item; returns a JSON-serialisable value.
        jobs (`Sequence`): the items.
        num_workers (`int`): processes to fork (at least 1; at most one per job is used).
        on_result (`Callable`, *optional*): called in the parent after each result arrives (e.g. a progress bar).
        finish (`Callable`, *optional*): called in each child after its last job; its JSON value is returned per
            worker (e.g. cache counters).

    Returns:
        `tuple[list, list]`: the results in the order of `jobs`, and each worker's `finish` value (None without).

    Raises:
        RuntimeError: when a worker fails (its traceback in the message) or exits without its results.
    """
    if num_workers < 1:
        raise ValueError(f"num_workers must be at least 1, got {num_workers!r}.")
    context = multiprocessing.get_context("fork")
    count = max(1, min(num_workers, len(jobs)))
    readers: dict[Connection, int] = {}
    processes = []
    for worker in range(count):
        reader, writer = context.Pipe(duplex=False)
        process = context.Process(target=_child, args=(job, jobs, worker, count, writer, finish), daemon=True)
        process.start()
        writer.close()
        readers[reader] = worker
        processes.append(process)
    results: list[Any] = [None] * len(jobs)
    finished: list[Any] = [None] * count
    try:
        _collect(readers, results, finished, on_result)
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    return results, finished


def _collect(readers: dict[Connection, int], results: list, finished: list, on_result) -> None:
    """Read every worker's messages until each has sent its `finish` line."""
    open_readers = dict(readers)
    while open_readers:
        for reader in wait(list(open_readers)):
            worker = open_readers[reader]
            try:
                message = json.loads(reader.recv_bytes().decode("utf-8"))
            except EOFError:
                raise RuntimeError(f"evaluation worker {worker} exited before sending all its results") from None
            if "error" in message:
                raise RuntimeError(f"evaluation worker {worker} failed:\n{message['error']}")
            if "finish" in message:
                finished[worker] = message["finish"]
                del open_readers[reader]
                continue
            results[message["index"]] = message["result"]
            if on_result is not None:
                on_result()


def _child(job, jobs, worker: int, count: int, writer: Connection, finish) -> None:
    """A worker's body: one thread, its share of the jobs, one JSON message per result, then its `finish` value."""
    try:
        import torch

        torch.set_num_threads(1)
        for index in range(worker, len(jobs), count):
            _send(writer, {"index": index, "result": job(jobs[index])})
        _send(writer, {"finish": finish() if finish is not None else None})
    except BaseException:  # noqa: BLE001 - every failure goes back to the parent, which raises it
        _send(writer, {"error": traceback.format_exc()})
    finally:
        writer.close()
        os._exit(0)  # no atexit handlers or finalisers of the parent's objects in the child


def _send(writer: Connection, message: dict) -> None:
    writer.send_bytes(json.dumps(message).encode("utf-8"))
