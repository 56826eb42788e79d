"""What both sides of `bench_vs_reference.py` share: shapes, settings, the step clock, peak RSS, row statistics.

Imported by `_reference_driver.py` (in the reference's own venv: transformers 4.57, no hf_lime), by
`_ours_driver.py` (in the project's `.venv`) and by `bench_vs_reference.py`. Only the standard library at import
time; torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
from pathlib import Path

LANGUAGES = ("en", "fr", "de", "zh", "ru")
VOCAB_SIZE = 119_547  # the mBERT vocabulary
NUM_TOP_LAYERS = 3  # the FFN linears of the top 3 blocks are edited
SHAPES = {
    "small": {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024},
    "base": {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072},
}
# Parameters of the trained editor (MEND networks, LayerNorms, language masks, step sizes), the same on both sides.
EDITOR_PARAMETERS = {"small": 13_224_966, "base": 59_335_686}
DEFAULT_STEPS = {"small": 40, "base": 30}
SIDES = ("reference", "ours")
# Texts whose token ids and logits must agree between the two venvs (the saved model loads identically).
CHECK_TEXTS = (
    "Paris is the capital of [MASK].",
    "Paris est la capitale de la [MASK].",
    "Berlin ist die Hauptstadt von [MASK] [MASK].",
    "巴黎是[MASK][MASK]的首都。",
    "Москва — столица [MASK].",
)


def model_name(shape: str) -> str:
    """The reference wants a model name that contains "bert"."""
    return f"bert-rand-{shape}"


def inner_params(shape: str) -> list[str]:
    """The edited weights: the FFN linears of the top `NUM_TOP_LAYERS` blocks, in the reference's order."""
    layers = SHAPES[shape]["num_hidden_layers"]
    return [
        f"bert.encoder.layer.{layer}.{name}.dense.weight"
        for layer in range(layers - NUM_TOP_LAYERS, layers)
        for name in ("intermediate", "output")
    ]


def step_intervals(marks: list[float], warmup: int) -> list[float]:
    """Seconds between consecutive micro-step ends after `warmup` steps: the first timed step starts when the last
    warm-up step ends, so `warmup` must be at least 1."""
    if warmup < 1:
        raise ValueError(
            f"warmup must be >= 1 (the first timed step starts at the end of a warm-up step), got {warmup}"
        )
    if len(marks) <= warmup:
        raise ValueError(f"{len(marks)} step ends recorded; need more than the {warmup} warm-up steps")
    return [b - a for a, b in zip(marks[warmup - 1 : -1], marks[warmup:], strict=True)]


def peak_rss_mib() -> float:
    """This process's peak resident set size (Linux reports `ru_maxrss` in KiB, macOS in bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class RowStats:
    """Rows, tokens and target tokens per row of each part of the batches a side reads.

    `targets` are the positions whose vocabulary logits a loss reads: labelled positions (`labels >= 0`) or, for a
    part without labels (the reference's locality row: KL over every token), its non-padding tokens.
    """

    def __init__(self) -> None:
        self.parts: dict[str, dict[str, list[int]]] = {}

    def add(self, part: str, input_ids, attention_mask, labels=None) -> None:
        record = self.parts.setdefault(part, {"rows": [], "tokens": [], "targets": []})
        record["rows"].append(int(input_ids.shape[0]))
        tokens = attention_mask.sum(-1)
        record["tokens"].extend(int(t) for t in tokens)
        targets = (labels >= 0).sum(-1) if labels is not None else tokens
        record["targets"].extend(int(t) for t in targets)

    def summary(self) -> dict[str, dict[str, float]]:
        return {
            part: {
                "rows_per_step": statistics.mean(r["rows"]),
                "tokens_per_row": statistics.mean(r["tokens"]),
                "target_tokens_per_row": statistics.mean(r["targets"]),
            }
            for part, r in self.parts.items()
        }


def set_one_thread() -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))


def checksum(model_dir: str) -> dict:
    """Token ids of `CHECK_TEXTS` and a checksum of the model's logits on them (eval mode, eager attention)."""
    import torch
    from transformers import AutoTokenizer, BertForMaskedLM

    set_one_thread()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = BertForMaskedLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    batch = tokenizer(list(CHECK_TEXTS), padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits.double()
    mask = batch["attention_mask"].bool()
    return {
        "input_ids": batch["input_ids"].tolist(),
        "vocab_size": len(tokenizer),
        "parameters": sum(p.numel() for p in model.parameters()),
        "logits_sum": float(logits[mask].sum()),
        "logits_abs_sum": float(logits[mask].abs().sum()),
        "logits_first": [float(x) for x in logits[0, 1, :5]],
    }


def write_json(path: str | Path, payload: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def add_driver_commands(sub, location: str):
    """The `checksum` and `time` commands both drivers take; `time` also takes `--<location>` (the reference's
    checkout, or our side's data folder). Returns the `time` parser (for a side's own options)."""
    check = sub.add_parser("checksum")
    check.add_argument("--model_dir", required=True)
    check.add_argument("--out", required=True)
    timed = sub.add_parser("time")
    timed.add_argument(f"--{location}", required=True)
    timed.add_argument("--model_dir", required=True)
    timed.add_argument("--shape", choices=sorted(SHAPES), required=True)
    timed.add_argument("--warmup", type=int, required=True)
    timed.add_argument("--steps", type=int, required=True)
    timed.add_argument("--out", required=True)
    return timed
