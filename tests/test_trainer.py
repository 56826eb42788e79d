"""`LimeTrainer` on a tiny synthetic fact world: parameters that change, logs, checkpoints, resume, guards."""

from __future__ import annotations

import pytest
import torch
from helpers_facts import LANGUAGES, build_fact_tokenizer, fact_items, pretrained_fact_model
from peft import get_peft_model

from hf_lime import LimeConfig
from hf_lime.data.episodes import EpisodeCollator, EpisodeDataset
from hf_lime.trainer import EPISODE_METRICS, LimeTrainer, LimeTrainingArguments


@pytest.fixture(scope="module")
def world():
    tokenizer = build_fact_tokenizer()
    items = fact_items()
    return tokenizer, items, pretrained_fact_model(tokenizer, items, steps=150)


def make_trainer(world, tmp_path, editor="mend", compute_metrics=None, **overrides):
    tokenizer, items, base = world
    model = get_peft_model(_copy(base), LimeConfig(languages=LANGUAGES, editor=editor, mend_rank=16, edit_lr_init=1.0))
    settings = dict(
        output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=2, learning_rate=1e-3,
        logging_steps=2, save_strategy="no", use_cpu=True, seed=0, n_retain=2, dataloader_num_workers=0,
    )  # fmt: skip
    settings.update(overrides)
    args = LimeTrainingArguments(**settings)
    episodes = EpisodeDataset(items, LANGUAGES, n_retain=2, num_episodes=24, seed=0)
    return LimeTrainer(
        model=model,
        args=args,
        train_dataset=episodes,
        eval_dataset=EpisodeDataset(items, LANGUAGES, n_retain=2, num_episodes=6, seed=1),
        data_collator=EpisodeCollator(tokenizer, "masked_lm"),
        compute_metrics=compute_metrics,
    )


def _copy(model):
    clone = type(model)(model.config)
    clone.load_state_dict(model.state_dict())
    return clone.eval()


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _base(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.get_base_model().state_dict().items()}


@pytest.mark.parametrize("editor", ["mend", "ke"])
def test_training_changes_every_trainable_parameter_and_no_base_weight(world, tmp_path, editor):
    trainer = make_trainer(world, tmp_path, editor=editor, max_steps=8)
    before, base_before = _trainable(trainer.model), _base(trainer.model)
    trainer.train()
    after = _trainable(trainer.model)
    unchanged = [n for n in before if torch.equal(before[n], after[n])]
    assert not unchanged, f"parameters that did not change: {unchanged}"
    base_after = _base(trainer.model)
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before)


def test_logs_episode_metrics_and_groups(world, tmp_path):
    trainer = make_trainer(world, tmp_path)
    trainer.train()
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert set(EPISODE_METRICS) <= logged
    assert "nonfinite_grad_steps" in logged
    groups = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert set(groups) == {"editor", "masks", "edit_lrs"}


def test_evaluate_reports_hmean_for_model_selection(world, tmp_path):
    trainer = make_trainer(world, tmp_path)
    metrics = trainer.evaluate()
    for name in EPISODE_METRICS:
        assert f"eval_{name}" in metrics
    assert 0.0 <= metrics["eval_hmean"] <= 1.0


def test_best_model_and_early_stopping(world, tmp_path):
    from transformers import EarlyStoppingCallback

    trainer = make_trainer(
        world, tmp_path, max_steps=8, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
        load_best_model_at_end=True,
    )  # fmt: skip
    trainer.add_callback(EarlyStoppingCallback(early_stopping_patience=1, early_stopping_threshold=10.0))
    trainer.train()
    assert trainer.state.best_metric is not None
    assert trainer.state.global_step < 8  # stopped early: no improvement of +10 in hmean is possible


def test_early_stopping_from_the_arguments_keeps_and_saves_the_best_editor(world, tmp_path):
    from safetensors.torch import load_file

    trainer = make_trainer(
        world, tmp_path, max_steps=12, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
        load_best_model_at_end=True, early_stopping_patience=1, early_stopping_threshold=10.0,
    )  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == 4  # evaluated at 2 (best) and 4 (no +10 improvement): stopped
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-2")
    best = load_file(f"{trainer.state.best_model_checkpoint}/adapter_model.safetensors")
    last = load_file(str(tmp_path / "out" / "checkpoint-4" / "adapter_model.safetensors"))
    assert any(not torch.equal(best[k], last[k]) for k in best)  # step 4's editor differs from step 2's
    trainer.save_model(str(tmp_path / "final"))
    final = load_file(str(tmp_path / "final" / "adapter_model.safetensors"))
    assert final.keys() == best.keys() and all(torch.equal(final[k], best[k]) for k in best)


def test_logs_step_sizes_and_gates_and_draws_the_curves(world, tmp_path):
    from hf_lime.trainer.curves import plot_training_curves

    trainer = make_trainer(world, tmp_path, max_steps=4, logging_steps=2, eval_strategy="steps", eval_steps=2)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "edit/acc" in entry]
    layers = len(trainer.model.base_model.layer_specs)
    assert all(f"edit_lr/{i}" in logged[0] for i in range(layers))
    assert all(f"gate/{lang}" in logged[0] for lang in LANGUAGES)
    assert logged[0]["edit_lr/0"] == pytest.approx(1.0, rel=0.2)  # edit_lr_init=1.0, a few steps of 1e-2
    path = plot_training_curves(trainer.state.log_history, tmp_path / "curves" / "training_curves.png")
    assert path.stat().st_size > 10_000
    with pytest.raises(ValueError, match="no logged step"):
        plot_training_curves([], tmp_path / "empty.png")


def test_compute_metrics_is_refused_with_a_clear_message(world, tmp_path):
    with pytest.raises(ValueError, match="does not take `compute_metrics`"):
        make_trainer(world, tmp_path, compute_metrics=lambda p: {})


def test_validation_batches_one_episode_at_a_time_by_default(tmp_path):
    assert LimeTrainingArguments(output_dir=str(tmp_path), use_cpu=True).per_device_eval_batch_size == 1


def test_reference_recipe(tmp_path):
    args = LimeTrainingArguments.from_recipe("reference", output_dir=str(tmp_path), use_cpu=True)
    assert (args.c_edit, args.c_loc, args.learning_rate, args.max_grad_norm) == (0.1, 1.0, 1e-6, 100.0)
    assert args.gradient_accumulation_steps == 10 and args.lr_scheduler_type == "constant"
    assert args.early_stopping_patience == 20 and args.load_best_model_at_end
    assert LimeTrainingArguments.from_recipe("reference", output_dir=str(tmp_path), c_edit=1.0).c_edit == 1.0
    cpu = LimeTrainingArguments.from_recipe("cpu", output_dir=str(tmp_path), use_cpu=True)
    assert (cpu.gradient_accumulation_steps, cpu.learning_rate, cpu.c_edit) == (1, 1e-5, 1.0)
    assert cpu.early_stopping_patience == 4 and cpu.eval_steps == cpu.save_steps == 100
    with pytest.raises(ValueError, match="Unknown recipe 'fast'"):
        LimeTrainingArguments.from_recipe("fast", output_dir=str(tmp_path))


def test_checkpoints_hold_adapter_files_only(world, tmp_path):
    trainer = make_trainer(world, tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    trainer.train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    names = {p.name for p in checkpoint.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names
    assert not any(n.startswith("model") and n.endswith(".safetensors") for n in names)
    assert not any(n.endswith(".bin") and "training_args" not in n for n in names)


def test_resume_from_checkpoint_continues_exactly(world, tmp_path):
    """Training 4 steps (checkpointing at 2) == resuming that checkpoint and training to 4, bit for bit."""
    straight = make_trainer(world, tmp_path / "a", max_steps=4, save_strategy="steps", save_steps=2)
    straight.train()
    resumed = make_trainer(world, tmp_path / "b", max_steps=4)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "out" / "checkpoint-2"))
    a, b = _trainable(straight.model), _trainable(resumed.model)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    fresh = make_trainer(world, tmp_path / "c", max_steps=4)
    assert any(not torch.equal(a[n], p) for n, p in _trainable(fresh.model).items())  # it did train


@pytest.mark.slow
def test_trained_editor_beats_the_untrained_one_on_training_episodes(world, tmp_path):
    """A few hundred episodes on a tiny fact world: edit success on those episodes rises clearly."""
    tokenizer, items, _ = world
    trainer = make_trainer(world, tmp_path, max_steps=120, per_device_train_batch_size=2, logging_steps=50,
                           c_edit=1.0, c_loc=0.3, edit_lr_learning_rate=1e-2)  # fmt: skip
    trainer.train_dataset = EpisodeDataset(items, LANGUAGES, n_retain=2, num_episodes=12, seed=0)
    trainer.eval_dataset = trainer.train_dataset
    before = trainer.evaluate()["eval_edit/acc"]
    trainer.train()
    after = trainer.evaluate()["eval_edit/acc"]
    assert after >= before + 0.15, (before, after)


def test_non_finite_gradients_are_skipped_and_counted(world, tmp_path, monkeypatch):
    from hf_lime.trainer import trainer as trainer_module

    calls = {"n": 0}
    original = trainer_module.run_episode

    def poisoned(*args, **kwargs):
        out = original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(trainer_module, "run_episode", poisoned)
    trainer = make_trainer(world, tmp_path, max_steps=3, logging_steps=1)
    trainer.train()
    assert trainer.nonfinite_steps == 1
    assert all(torch.isfinite(p).all() for p in _trainable(trainer.model).values())
    assert any(entry.get("nonfinite_grad_steps") == 1 for entry in trainer.state.log_history)


def test_rejects_mismatched_languages_and_untrainable_editors(world, tmp_path):
    tokenizer, items, base = world
    model = get_peft_model(_copy(base), LimeConfig(languages=LANGUAGES))
    args = LimeTrainingArguments(output_dir=str(tmp_path), languages=["fr", "en", "de"], use_cpu=True)
    with pytest.raises(ValueError, match="mask row order"):
        LimeTrainer(model=model, args=args, data_collator=EpisodeCollator(tokenizer, "masked_lm"))
    episodes = EpisodeDataset(items, ["de", "en", "fr"], n_retain=2)
    args = LimeTrainingArguments(output_dir=str(tmp_path), use_cpu=True)
    with pytest.raises(ValueError, match="train_dataset.languages"):
        LimeTrainer(
            model=model, args=args, train_dataset=episodes, data_collator=EpisodeCollator(tokenizer, "masked_lm")
        )
    ft = get_peft_model(_copy(base), LimeConfig(languages=LANGUAGES, editor="ft"))
    with pytest.raises(ValueError, match="nothing to train"):
        LimeTrainer(model=ft, args=args, data_collator=EpisodeCollator(tokenizer, "masked_lm"))
    with pytest.raises(TypeError, match="LIME adapter"):
        LimeTrainer(model=_copy(base), args=args, data_collator=EpisodeCollator(tokenizer, "masked_lm"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"c_edit": -1.0}, "c_edit"),
        ({"preset": "some"}, "preset"),
        ({"n_edit": 0}, "n_edit"),
        ({"remove_unused_columns": True}, "remove_unused_columns"),
        ({"early_stopping_patience": 3}, "load_best_model_at_end"),
        ({"early_stopping_patience": 0, "eval_strategy": "steps", "load_best_model_at_end": True}, "patience"),
        ({"head_dtype": "float16"}, "head_dtype"),
    ],
)
def test_training_arguments_validation(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        LimeTrainingArguments(output_dir=str(tmp_path), use_cpu=True, **kwargs)


def _named_base(world, tmp_path):
    """The world's base model saved to and loaded from a folder: it then knows its name (as a real model does)."""
    from transformers import AutoModelForMaskedLM

    tokenizer, items, base = world
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    return AutoModelForMaskedLM.from_pretrained(tmp_path / "base").eval()


def _trainer_on(base, world, tmp_path, **overrides):
    tokenizer, items, _ = world
    model = get_peft_model(base, LimeConfig(languages=LANGUAGES, mend_rank=16, edit_lr_init=1e-2))
    args = LimeTrainingArguments(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=1,
                                 save_strategy="no", use_cpu=True, report_to="none", **overrides)  # fmt: skip
    return LimeTrainer(
        model=model,
        args=args,
        processing_class=tokenizer,
        data_collator=EpisodeCollator(tokenizer, "masked_lm"),
        train_dataset=EpisodeDataset(items, LANGUAGES, n_retain=2, num_episodes=4),
    )


def test_trainer_saves_are_complete_editors(world, tmp_path):
    from hf_lime import LimeEditor

    trainer = _trainer_on(_named_base(world, tmp_path), world, tmp_path)
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    names = {p.name for p in (tmp_path / "saved").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "lime_editor.json", "README.md"} <= names
    assert "library_name: hf_lime" in (tmp_path / "saved" / "README.md").read_text()
    loaded = LimeEditor.from_pretrained(tmp_path / "saved")
    assert loaded.training_info["global_step"] == 2 and loaded.languages == LANGUAGES
    for name, param in trainer.model.base_model.edit_lrs.named_parameters():
        assert torch.equal(dict(loaded.model.base_model.edit_lrs.named_parameters())[name], param)


def test_trainer_push_to_hub_pushes_a_complete_editor(world, tmp_path):
    from hub_server import running_hub

    from hf_lime import LimeEditor

    base = _named_base(world, tmp_path)
    with running_hub(tmp_path) as hub:
        trainer = _trainer_on(base, world, tmp_path, push_to_hub=True, hub_model_id="org/ex", hub_token="hf_test")
        trainer.train()
        trainer.push_to_hub(license="mit")  # transformers passes card arguments on to create_model_card
        files = hub.files("org/ex")
        assert {"adapter_config.json", "adapter_model.safetensors", "lime_editor.json", "README.md"} <= set(files)
        assert b"library_name: hf_lime" in files["README.md"] and b"license: mit" in files["README.md"]
        pulled = LimeEditor.from_pretrained("org/ex")
        assert pulled.languages == LANGUAGES and pulled.training_info["trainer"] == "LimeTrainer"


def test_items_become_the_episodes_the_arguments_describe(world, tmp_path):
    tokenizer, items, base = world
    model = get_peft_model(_copy(base), LimeConfig(languages=LANGUAGES, mend_rank=16, edit_lr_init=1e-2))
    args = LimeTrainingArguments(output_dir=str(tmp_path), max_steps=1, save_strategy="no", use_cpu=True,
                                 report_to="none", preset="monolingual", n_retain=3, episode_seed=5)  # fmt: skip
    trainer = LimeTrainer(model=model, args=args, train_dataset=items, eval_dataset=items,
                          data_collator=EpisodeCollator(tokenizer, "masked_lm"))  # fmt: skip
    train, evaluation = trainer.train_dataset, trainer.eval_dataset
    assert isinstance(train, EpisodeDataset) and isinstance(evaluation, EpisodeDataset)
    assert train.edit_languages == train.update_languages == ["en"] and train.seed == 5 and evaluation.seed == 6
    episode = train[0]
    assert len(episode["retain"]) == 3 and episode["edit"][0]["language"] == "en"
    trainer.train()


def test_trainer_saves_are_all_or_nothing(world, tmp_path, monkeypatch):
    """A save that fails half-way leaves the previous complete editor (and the folder's other files) in place."""
    from hf_lime import LimeEditor

    trainer = _trainer_on(_named_base(world, tmp_path), world, tmp_path)
    trainer.train()
    folder = tmp_path / "saved"
    trainer.save_model(str(folder))
    (folder / "notes.txt").write_text("kept")
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(trainer), "_describe", broken)
    with pytest.raises(OSError, match="disk full"):
        trainer.save_model(str(folder))
    after = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert after == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and p.is_dir()]
    assert LimeEditor.from_pretrained(folder).languages == LANGUAGES


def test_keep_freed_memory_sets_glibc_options_on_linux(monkeypatch):
    """The allocator helper calls mallopt with the trim and mmap thresholds, and reports when it cannot."""
    import sys
    from types import SimpleNamespace

    from hf_lime.trainer import malloc

    calls = []

    def mallopt(option, value):
        calls.append((option, value))
        return 1

    monkeypatch.setattr(malloc.ctypes, "CDLL", lambda name: SimpleNamespace(mallopt=mallopt))
    monkeypatch.setattr(sys, "platform", "linux")
    assert malloc.keep_freed_memory() is True
    assert dict(calls) == {malloc.M_TRIM_THRESHOLD: 2**31 - 1, malloc.M_MMAP_THRESHOLD: malloc.MMAP_THRESHOLD_MAX}
    monkeypatch.setattr(sys, "platform", "win32")
    assert malloc.keep_freed_memory() is False


@pytest.mark.parametrize("keep", [True, False])
def test_the_trainer_keeps_freed_memory_on_a_cpu_when_asked(world, tmp_path, monkeypatch, keep):
    from hf_lime.trainer import trainer as trainer_module

    calls = []
    monkeypatch.setattr(trainer_module, "keep_freed_memory", lambda: calls.append(1) or True)
    trainer = make_trainer(world, tmp_path, keep_freed_memory=keep)
    assert trainer.args.keep_freed_memory is keep
    assert len(calls) == int(keep)


def test_bfloat16_head_products_train_the_editor_and_are_recorded(world, tmp_path, monkeypatch):
    """`head_dtype="bfloat16"`: the episodes' vocabulary products run on the bfloat16 copy (counted here, with the
    size threshold lowered so the tiny model's head qualifies) and the editor still learns."""
    import hf_lime.head_product as hp

    monkeypatch.setattr(hp, "MIN_ELEMENTS", 0)
    calls = []
    real = hp._LowHeadProduct.forward
    monkeypatch.setattr(hp._LowHeadProduct, "forward", staticmethod(lambda *a: calls.append(1) or real(*a)))
    trainer = make_trainer(world, tmp_path, max_steps=4, head_dtype="bfloat16")
    before = _trainable(trainer.model)
    trainer.train()
    assert calls, "no product ran in bfloat16"
    after = _trainable(trainer.model)
    assert all(not torch.equal(before[n], after[n]) for n in before)
    assert trainer._training_info()["head_dtype"] == "bfloat16"
    with hp.low_precision(None):  # outside training the products are float32 again
        assert hp._LOW["dtype"] is None


def test_prefix_cache_trains_the_same_editor(world, tmp_path):
    """`prefix_cache=True` (the default: every episode's rows run the lower blocks once) trains the editor that
    `prefix_cache=False` trains, up to float rounding, and its episodes really start at the first edited block."""
    from hf_lime.prefix_cache import PrefixCache

    prefills = []
    real = PrefixCache.prefill
    trained = {}
    for flag in (False, True):
        torch.manual_seed(0)  # the same initial editor
        trainer = make_trainer(world, tmp_path / str(flag), max_steps=3, prefix_cache=flag)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(PrefixCache, "prefill", lambda self, **kw: prefills.append(real(self, **kw)) or prefills[-1])
            trainer.train()
        trained[flag] = _trainable(trainer.model)
        assert (trainer._prefix_cache is not None) == flag
    assert len(prefills) == 3 and all(rows > 0 for rows in prefills)  # one prefill per episode batch, all rows new
    assert trained[True].keys() == trained[False].keys()
    for name, value in trained[False].items():
        torch.testing.assert_close(trained[True][name], value, rtol=1e-4, atol=1e-6, msg=name)
