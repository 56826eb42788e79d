"""The reference side of `bench_vs_reference.py`; runs in the reference's own venv (never in the project's).

    python benchmarks/_reference_driver.py build-model --shape small --tokenizer_dir TOK --out_dir DIR
    python benchmarks/_reference_driver.py checksum --model_dir DIR --out RESULT.json
    python benchmarks/_reference_driver.py time --reference_dir LIME --model_dir DIR --shape small \
        --warmup 3 --steps 40 --out RESULT.json        # run with the working directory holding data/mlama/

`time` runs the reference's `run.py` through `runpy`, exactly as `python -m run +alg=mend ...` would, with three
changes made from here at run time (nothing in the checkout or in site-packages is edited):

- `trainer.BaseTrainer.run` is replaced by a timed loop that keeps its `global_iter` / `train_step()` sequence (so
  its optimizer step when `global_iter % accumulate_bs == 0`) and drops validation, logging and saving;
- `higher.patch.monkeypatch` accepts the `in_place` argument of the `higher` fork the reference pins: when true,
  the functional model's fast weights are the module's own parameter tensors (no copy; checked on the first call);
- `BertForMaskedLM.from_pretrained` loads with eager attention (transformers 4.57 would pick SDPA), and a no-op
  `wandb` module stands in for the real one.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import time
import types
from pathlib import Path

from _vs_reference_common import (
    LANGUAGES,
    SHAPES,
    VOCAB_SIZE,
    RowStats,
    add_driver_commands,
    checksum,
    inner_params,
    model_name,
    peak_rss_mib,
    set_one_thread,
    step_intervals,
    write_json,
)

# The reference's parts, under the names hf_lime gives them.
PART_NAMES = {"edit_inner": "edit", "edit_outer": "update", "loc": "retain"}


def build_model(shape: str, tokenizer_dir: str, out_dir: str) -> None:
    """A random BertForMaskedLM of `shape` with the mBERT vocabulary, dropout 0, seed 0, and its tokenizer."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    set_one_thread()
    tokenizer = BertTokenizerFast(
        vocab_file=str(Path(tokenizer_dir) / "vocab.txt"),
        tokenizer_file=str(Path(tokenizer_dir) / "tokenizer.json"),
        do_lower_case=False,  # mBERT is cased
        model_max_length=512,  # as bert-base-multilingual-cased (the reference truncates at this length)
    )
    if len(tokenizer) != VOCAB_SIZE:
        raise SystemExit(f"{tokenizer_dir}: {len(tokenizer)} tokens, expected the mBERT vocabulary of {VOCAB_SIZE}")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB_SIZE, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **SHAPES[shape]
    )
    model = BertForMaskedLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def install_wandb_stub() -> None:
    """A no-op `wandb` (the trainer calls `wandb.init` / `wandb.Settings` / `wandb.log`)."""
    stub = types.ModuleType("wandb")
    stub.init = lambda *args, **kwargs: None
    stub.log = lambda *args, **kwargs: None
    stub.finish = lambda *args, **kwargs: None
    stub.Settings = lambda *args, **kwargs: None
    sys.modules["wandb"] = stub


def patch_higher() -> None:
    """Let `higher.patch.monkeypatch` take the pinned fork's `in_place=True`: the module's own parameter tensors are
    the fast weights, not copies (PyPI's `copy_initial_weights=False` still clones them, a cost the authors did not
    have). Checked on the first call."""
    import higher.patch

    original = higher.patch.monkeypatch
    checked = []

    def monkeypatch(module, device=None, copy_initial_weights=True, track_higher_grads=True, in_place=False):
        if not in_place:
            return original(module, device, copy_initial_weights, track_higher_grads)

        def encapsulator(fmodule, module) -> None:
            params = [p if device is None else p.to(device) for p in module.parameters()]
            higher.patch.buffer_sync(module, fmodule, device)
            fmodule.update_params(params)

        fmodule = higher.patch.make_functional(module, encapsulator=encapsulator)
        fmodule.track_higher_grads = track_higher_grads
        if not checked:
            own, fast = list(module.parameters()), list(fmodule.fast_params)
            if len(own) != len(fast) or any(a is not b for a, b in zip(own, fast, strict=True)):
                raise RuntimeError("higher patch: the fast weights are not the module's own parameter tensors")
            checked.append(True)
        return fmodule

    higher.patch.monkeypatch = monkeypatch


def force_eager_attention() -> None:
    import transformers

    cls = transformers.BertForMaskedLM
    original = cls.from_pretrained.__func__

    def from_pretrained(klass, *args, **kwargs):
        kwargs.setdefault("attn_implementation", "eager")
        return original(klass, *args, **kwargs)

    cls.from_pretrained = classmethod(from_pretrained)


def overrides(shape: str, model_dir: str) -> list[str]:
    params = ",".join(inner_params(shape))
    language_idx = ",".join(f"{lang}:{i}" for i, lang in enumerate(LANGUAGES))
    return [
        "+alg=mend",
        "+experiment=lama",
        "+model=mbert-base",
        f"model.name={model_name(shape)}",
        f"model.pt={model_dir}",
        f"model.tokenizer_name={model_dir}",
        f"model.inner_params=[{params}]",
        "lime.enabled=true",
        f"lime.language_idx={{{language_idx}}}",
        f"languages=[{','.join(LANGUAGES)}]",
        "sub_uri_list_dir=null",
        "device=cpu",
        "eval.final_eval=False",
        "seed=0",
    ]


def counting(generator, stats: RowStats):
    for batch in generator:
        for part, name in PART_NAMES.items():
            b = batch[part]
            stats.add(name, b["input_ids"], b["attention_mask"], b.get("labels"))
        yield batch


def time_reference(args: argparse.Namespace) -> None:
    reference = Path(args.reference_dir).resolve()
    if not (reference / "run.py").is_file() or not (reference / "trainer.py").is_file():
        raise SystemExit(f"{reference} is not a checkout of the LiME reference (no run.py / trainer.py)")
    if not Path("data/mlama/mlama1.1").is_dir():
        raise SystemExit(f"{Path.cwd()} has no data/mlama/mlama1.1: run from the prepared working directory")
    set_one_thread()
    sys.path.insert(0, str(reference))
    install_wandb_stub()
    patch_higher()
    force_eager_attention()
    import trainer

    def timed_run(self) -> None:
        alg = self.model
        attention = alg.model.config._attn_implementation
        if attention != "eager":
            raise RuntimeError(f"the reference's model runs with {attention!r} attention, not eager")
        stats = RowStats()
        self.edit_gen = counting(self.edit_gen, stats)
        marks = []
        for global_iter in range(args.warmup + args.steps):
            self.global_iter = global_iter
            self.train_step()
            marks.append(time.perf_counter())
        write_json(
            args.out,
            {
                "side": "reference",
                "steps_s": step_intervals(marks, args.warmup),
                "peak_rss_mib": peak_rss_mib(),
                "editor_parameters": sum(p.numel() for p in alg.outer_parameters()),
                "optimizer_steps": sum(1 for i in range(1, len(marks)) if i % self.config.accumulate_bs == 0),
                "attention": attention,
                "threads": __import__("torch").get_num_threads(),
                "parts": stats.summary(),
            },
        )

    trainer.BaseTrainer.run = timed_run
    sys.argv = [str(reference / "run.py"), *overrides(args.shape, str(Path(args.model_dir).resolve()))]
    runpy.run_path(str(reference / "run.py"), run_name="__main__")
    if not Path(args.out).is_file():
        raise SystemExit("the reference's run.py returned without running the timed loop (see the log above)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build-model")
    build.add_argument("--shape", choices=sorted(SHAPES), required=True)
    build.add_argument("--tokenizer_dir", required=True)
    build.add_argument("--out_dir", required=True)
    add_driver_commands(sub, "reference_dir")
    args = parser.parse_args(argv)
    if args.command == "build-model":
        build_model(args.shape, args.tokenizer_dir, args.out_dir)
    elif args.command == "checksum":
        write_json(args.out, {"side": "reference", **checksum(args.model_dir)})
    else:
        args.out = os.path.abspath(args.out)  # hydra changes the working directory
        time_reference(args)


if __name__ == "__main__":
    main()
