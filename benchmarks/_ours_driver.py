"""hf_lime's side of `bench_vs_reference.py`; runs in the project's `.venv`.

    python benchmarks/_ours_driver.py checksum --model_dir DIR --out RESULT.json
    python benchmarks/_ours_driver.py time --model_dir DIR --data_dir ../shared/data --shape small \
        --warmup 3 --steps 40 --out RESULT.json

`time` trains a LiME-MEND editor with `LimeTrainer` on mLAMA episodes (en fr de zh ru, split by subject) with the
reference's settings (docs: ../shared/docs/bench-vs-reference.md) and records the end of every micro-step with a
`TrainerCallback`; it stops after `warmup + steps` micro-steps.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time

from _vs_reference_common import (
    LANGUAGES,
    NUM_TOP_LAYERS,
    RowStats,
    add_driver_commands,
    checksum,
    peak_rss_mib,
    set_one_thread,
    step_intervals,
    write_json,
)

GRADIENT_ACCUMULATION = 10  # the reference's accumulate_bs


class CountingCollator:
    """The episode collator, recording rows and target tokens of every part it builds."""

    def __init__(self, collator, stats: RowStats) -> None:
        self.collator, self.stats, self.task = collator, stats, collator.task

    def __call__(self, episodes):
        batch = self.collator(episodes)
        for part, b in batch.items():
            self.stats.add(part, b["input_ids"], b["attention_mask"], b.get("labels"))
        return batch


def time_ours(args: argparse.Namespace) -> None:
    import torch
    from peft import get_peft_model
    from transformers import AutoTokenizer, BertForMaskedLM, TrainerCallback, set_seed

    from hf_lime import LimeConfig
    from hf_lime.data import load_mlama
    from hf_lime.data.episodes import EpisodeCollator, EpisodeDataset
    from hf_lime.trainer import LimeTrainer, LimeTrainingArguments

    set_one_thread()
    total = args.warmup + args.steps

    class StepClock(TrainerCallback):
        """The end of every micro-step (`on_substep_end`, or `on_step_end` after the optimizer step)."""

        def __init__(self) -> None:
            self.marks: list[float] = []

        def _mark(self, control):
            self.marks.append(time.perf_counter())
            if len(self.marks) >= total:
                control.should_training_stop = True
            return control

        def on_substep_end(self, args, state, control, **kwargs):
            return self._mark(control)

        def on_step_end(self, args, state, control, **kwargs):
            return self._mark(control)

    splits = load_mlama(args.data_dir, list(LANGUAGES), seed=0)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    base = BertForMaskedLM.from_pretrained(args.model_dir, attn_implementation="eager")
    attention = base.config._attn_implementation
    if attention != "eager":
        raise RuntimeError(f"our model runs with {attention!r} attention, not eager")
    set_seed(0)
    config = LimeConfig(
        languages=list(LANGUAGES),
        editor="mend",
        use_lime_mask=True,
        mend_rank=1920,
        num_top_layers=NUM_TOP_LAYERS,
        edit_lr_init=1e-4,
        mend_compute_dtype=args.mend_dtype,
    )
    model = get_peft_model(base, config)
    editor_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    stats, clock = RowStats(), StepClock()
    with tempfile.TemporaryDirectory() as output_dir:
        training_args = LimeTrainingArguments(
            output_dir=output_dir,
            per_device_train_batch_size=1,
            gradient_accumulation_steps=GRADIENT_ACCUMULATION,
            learning_rate=1e-6,
            mask_learning_rate=1e-3,
            edit_lr_learning_rate=1e-4,
            weight_decay=0.0,
            max_grad_norm=100.0,
            lr_scheduler_type="constant",
            c_edit=0.1,
            c_loc=1.0,
            c_l0=1.0,
            n_edit=1,
            n_retain=1,
            max_steps=math.ceil(total / GRADIENT_ACCUMULATION),
            eval_strategy="no",
            save_strategy="no",
            logging_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=True,
            seed=0,
            dataloader_num_workers=0,
            head_dtype=args.head_dtype,
        )
        trainer = LimeTrainer(
            model=model,
            args=training_args,
            train_dataset=EpisodeDataset(splits["train"], languages=list(LANGUAGES), n_edit=1, n_retain=1, seed=0),
            data_collator=CountingCollator(EpisodeCollator(tokenizer, "masked_lm"), stats),
            processing_class=tokenizer,
            callbacks=[clock],
        )
        trainer.train()
    if len(clock.marks) < total:
        raise RuntimeError(f"training stopped after {len(clock.marks)} micro-steps, {total} wanted")
    write_json(
        args.out,
        {
            "side": "ours",
            "steps_s": step_intervals(clock.marks, args.warmup),
            "peak_rss_mib": peak_rss_mib(),
            "editor_parameters": editor_parameters,
            "optimizer_steps": trainer.state.global_step,
            "attention": attention,
            "threads": torch.get_num_threads(),
            "head_dtype": args.head_dtype,
            "mend_dtype": args.mend_dtype,
            "parts": stats.summary(),
        },
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    timed = add_driver_commands(sub, "data_dir")
    timed.add_argument("--head_dtype", choices=["float32", "bfloat16"], default="float32")
    timed.add_argument("--mend_dtype", choices=["float32", "bfloat16"], default="float32")
    args = parser.parse_args(argv)
    if args.command == "checksum":
        write_json(args.out, {"side": "ours", **checksum(args.model_dir)})
    else:
        time_ours(args)


if __name__ == "__main__":
    main()
