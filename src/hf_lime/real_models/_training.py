"""Small pieces shared by the two fine-tuning recipes: threads, freezing, batching, schedules, result files."""

from __future__ import annotations

import contextlib
import json
import logging
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

EVAL_RESULTS_FILE = "eval_results.json"


def configure_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op CPU threads when ``num_threads`` is given; return the number in use.

    By default torch's own setting is kept (it follows ``OMP_NUM_THREADS``). On a busy machine more threads than
    free cores is much slower than one thread; on an idle 2-core machine ``num_threads=2`` is fastest.

    Args:
        num_threads (`int`, *optional*): threads to use; `None` keeps the current setting.
    """
    if num_threads is not None:
        if not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads must be a positive int, got {num_threads!r}.")
        torch.set_num_threads(num_threads)
    return torch.get_num_threads()


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports while loading a base encoder into a model with a new head (expected)."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def freeze_bottom(bert: torch.nn.Module, frozen_layers: int) -> None:
    """Freeze the embeddings and the first ``frozen_layers`` encoder layers of a ``BertModel``.

    The frozen bottom then builds no autograd graph at all (its inputs need no gradient), which is most of the speed.

    Args:
        bert (`BertModel`): the encoder (``model.bert``).
        frozen_layers (`int`): how many of the lowest layers to freeze, ``0 ≤ frozen_layers ≤ num_layers``.
    """
    layers = bert.encoder.layer
    if not 0 <= frozen_layers <= len(layers):
        raise ValueError(f"frozen_layers must be between 0 and {len(layers)}, got {frozen_layers}.")
    bert.embeddings.requires_grad_(False)
    for index, layer in enumerate(layers):
        layer.requires_grad_(index >= frozen_layers)


def length_grouped_batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle, then sort chunks of ``50 × batch_size`` by length and cut them into batches (shuffled order).

    Args:
        lengths (`Sequence[int]`): token count of each example.
        batch_size (`int`): examples per batch.
        rng (`random.Random`): the source of randomness.

    Returns:
        `list[list[int]]`: index batches covering every example once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = 50 * batch_size
    batches = []
    for start in range(0, len(order), chunk):
        group = sorted(order[start : start + chunk], key=lambda index: lengths[index])
        batches.extend(group[i : i + batch_size] for i in range(0, len(group), batch_size))
    rng.shuffle(batches)
    return batches


def endless_batches(lengths: Sequence[int], batch_size: int, seed: int) -> Iterator[list[int]]:
    """Length-grouped batches, epoch after epoch, deterministic for a seed."""
    if not lengths:
        raise ValueError("There are no training examples.")
    rng = random.Random(seed)
    while True:
        yield from length_grouped_batches(lengths, batch_size, rng)


def linear_schedule(optimizer: torch.optim.Optimizer, steps: int, warmup_ratio: float):
    """Linear warm-up over ``warmup_ratio · steps`` then linear decay to zero."""
    from transformers import get_linear_schedule_with_warmup

    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}.")
    return get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * steps), steps)


def check_positive(**values: float) -> None:
    """Raise a ValueError naming the first argument that is not strictly positive."""
    for name, value in values.items():
        if value is None or value <= 0:
            raise ValueError(f"{name} must be positive, got {value!r}.")


def write_eval_results(output_dir: str | Path, results: dict) -> Path:
    """Write ``eval_results.json`` (sorted keys, indented) and return its path."""
    path = Path(output_dir) / EVAL_RESULTS_FILE
    path.write_text(json.dumps(results, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def per_language_mean(scores: dict[str, float]) -> float:
    """Unweighted mean over languages (0.0 when empty)."""
    return sum(scores.values()) / len(scores) if scores else 0.0
