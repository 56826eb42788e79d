"""Three ways to make a demo edit hold more often, tried in session 34 (none kept; docs/results.md §4a).

Runs `examples/demo.py` with its arguments (give it `--editor` and `--preserve_weight`) and every edit of its
evaluation made one of these ways, wrapped around `LimeModel.edit` for the run only (nothing in `hf_lime` changes):

- `refit`: each edit through `edit_many`'s refit with the preserved keys (`hf_lime.tuner.refit`): fitted layer by
  layer and, while it does not hold in its own language, weighted up and refitted (4 fits at most).
- `scaled`: an edit that does not hold in its own language is scaled by 1.5, 2, 3, 4, then 6 until it does.
- `iterate`: an edit that does not hold is followed by further MEND edits of the same request, each computed on the
  model holding the previous ones (`--max_steps` MEND edits in all), as fine-tuning takes several steps.

Whether an edit holds is read in its own language only (the editing prompt); no other language is looked at.

    OMP_NUM_THREADS=1 python benchmarks/demo_edit_variants.py --variant iterate --editor outputs/demo \
        --preserve_weight 0.3 --eval_split validation --eval_workers 1 --output_dir outputs/attempts/iterate-w03-val
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path
from typing import Any

from hf_lime.deltas import LayerDelta
from hf_lime.tuner.edit_group import EditGroup
from hf_lime.tuner.model import LimeModel

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.py"
SCALES = (1.5, 2.0, 3.0, 4.0, 6.0)
LIBRARY_EDIT = LimeModel.edit


def _holds(tuner: LimeModel, inputs: Any) -> bool:
    return bool(tuner._rows_held([inputs])[0].all())


def refit_edit(tuner: LimeModel, inputs: Any, language: Any = None, retain_inputs: Any = None, **options: Any) -> Any:
    """One request through `edit_many`'s refit-until-held path (needs `combine="solve"` and `preserve`)."""
    if options.get("combine") != "solve" or options.get("preserve") is None:
        raise ValueError("--variant refit needs --preserve_weight (edits with combine='solve' and preserve=).")
    return tuner.edit_many([inputs], [language], mode="batch", **options)


def scaled_edit(tuner: LimeModel, inputs: Any, language: Any = None, retain_inputs: Any = None, **options: Any) -> Any:
    """The library's edit, scaled up by `SCALES` in turn while it does not hold."""
    edit = LIBRARY_EDIT(tuner, inputs, language, retain_inputs, **options)
    own = dict(edit.deltas)
    for scale in SCALES:
        if _holds(tuner, inputs):
            break
        edit.revert()
        edit.deltas = {key: LayerDelta(delta.B * scale, delta.A) for key, delta in own.items()}
        edit = tuner._apply_checked(edit, inputs)
    return edit


def iterated_edit(max_steps: int):
    """The library's edit repeated on the edited model while it does not hold, `max_steps` edits at most."""

    def edit(tuner: LimeModel, inputs: Any, language: Any = None, retain_inputs: Any = None, **options: Any) -> Any:
        edits = []
        try:
            for _ in range(max_steps):
                edits.append(LIBRARY_EDIT(tuner, inputs, language, retain_inputs, **options))
                if _holds(tuner, inputs):
                    break
        except BaseException:
            for done in reversed(edits):
                done.revert()
            raise
        return EditGroup(edits, mode="sequential")

    return edit


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", required=True, choices=["refit", "scaled", "iterate"])
    parser.add_argument("--max_steps", type=int, default=5, help="iterate: MEND edits of one request at most.")
    args, rest = parser.parse_known_args(argv)
    variants = {"refit": refit_edit, "scaled": scaled_edit, "iterate": iterated_edit(args.max_steps)}
    LimeModel.edit = variants[args.variant]
    sys.argv = [str(DEMO), *rest]
    runpy.run_path(str(DEMO), run_name="__main__")


if __name__ == "__main__":
    main()
