"""`training_curves.png`: what a `LimeTrainer` run logged, as curves over the optimizer steps.

Panels: edit and locality accuracy with their harmonic mean (training episodes, and the validation episodes when the
run evaluated), the loss parts, the learned step size of every edited layer, the mean gate of every language's mask,
and the gradient norm. The names are those of `hf_lime.trainer.episode`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..metrics.plots import _new_figure, _save
from .episode import EDIT_ACC, EDIT_LR_PREFIX, GATE_PREFIX, HMEAN, LOC_ACC, LOSS_EDIT, LOSS_L0, LOSS_LOC

CURVES_FILE = "training_curves.png"


def _series(history: Sequence[dict], name: str) -> tuple[list[float], list[float]]:
    points = [(entry["step"], entry[name]) for entry in history if name in entry and "step" in entry]
    return [step for step, _ in points], [value for _, value in points]


def _names(history: Sequence[dict], prefix: str) -> list[str]:
    return list(dict.fromkeys(name for entry in history for name in entry if name.startswith(prefix)))


def _panel(axes, history, names: Sequence[str], title: str, log: bool = False, labels: Sequence[str] | None = None):
    drawn = False
    for name, label in zip(names, labels or names, strict=True):
        steps, values = _series(history, name)
        if steps:
            axes.plot(steps, values, marker="." if len(steps) < 30 else None, label=label)
            drawn = True
    axes.set_title(title, fontsize=9)
    axes.set_xlabel("optimizer step", fontsize=8)
    axes.tick_params(labelsize=7)
    if log and drawn:
        axes.set_yscale("log")
    if drawn:
        axes.legend(fontsize=6, ncol=2)
    else:
        axes.text(0.5, 0.5, "not logged", ha="center", va="center", transform=axes.transAxes, fontsize=8)


def plot_training_curves(log_history: Sequence[dict], path: str | Path) -> Path:
    """
    Draw a run's logged curves into one PNG.

    Args:
        log_history (`Sequence[dict]`): `trainer.state.log_history`.
        path (`str` or `Path`): Where to write the PNG (parent directories are created).

    Returns:
        `Path`: The written file.
    """
    if not any("step" in entry for entry in log_history):
        raise ValueError("The log history has no logged step: train with logging_steps > 0 before plotting.")
    figure = _new_figure(13.0, 6.5)
    grid = figure.subplots(2, 3)
    accuracy = [EDIT_ACC, LOC_ACC, HMEAN, f"eval_{EDIT_ACC}", f"eval_{LOC_ACC}", f"eval_{HMEAN}"]
    labels = [EDIT_ACC, LOC_ACC, HMEAN, f"validation {EDIT_ACC}", f"validation {LOC_ACC}", f"validation {HMEAN}"]
    _panel(grid[0][0], log_history, accuracy, "accuracy (episodes)", labels=labels)
    losses = [LOSS_EDIT, LOSS_LOC, LOSS_L0, "loss"]
    _panel(grid[0][1], log_history, losses, "loss parts (training)", log=True)
    steps = _names(log_history, EDIT_LR_PREFIX)
    _panel(grid[0][2], log_history, steps, "edit step size per edited layer", log=True,
           labels=[name.replace(EDIT_LR_PREFIX, "layer ") for name in steps])  # fmt: skip
    gates = _names(log_history, GATE_PREFIX)
    _panel(grid[1][0], log_history, gates, "mean gate per language mask",
           labels=[name.replace(GATE_PREFIX, "") for name in gates])  # fmt: skip
    _panel(grid[1][1], log_history, ["grad_norm"], "meta-gradient norm (before clipping)", log=True)
    _panel(grid[1][2], log_history, ["learning_rate"], "editor learning rate")
    return _save(figure, path)
