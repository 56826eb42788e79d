"""Editors trained for batches of edits (issue 29, item 2): an episode of `n_edit` edits is one editor call over all
its edit rows, the very edit `LimeEditor.edit_many(mode="batch")` makes; the trained batch size is saved with the
editor, and `edit_many` warns once when a batch is larger than that."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import pytest
import torch
from helpers_facts import LANGUAGES, build_fact_tokenizer, fact_items, pretrained_fact_model
from peft import get_peft_model
from test_edit_many import REQUESTS, mend_editor
from testing_common import perturb_trainables

from hf_lime import LimeConfig, LimeEditor
from hf_lime.data.episodes import EpisodeCollator, EpisodeDataset
from hf_lime.trainer import LimeTrainer, LimeTrainingArguments, run_episode

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world():
    tokenizer = build_fact_tokenizer()
    items = fact_items()
    return tokenizer, items, pretrained_fact_model(tokenizer, items, steps=40)


def lime_model(base) -> torch.nn.Module:
    """A LIME-MEND adapter whose networks and masks are off their initial values (a stand-in for training)."""
    copy = type(base)(base.config)
    copy.load_state_dict(base.state_dict())
    model = get_peft_model(copy.eval(), LimeConfig(languages=LANGUAGES, mend_rank=8, edit_lr_init=1e-2))
    perturb_trainables(model, scale=0.05)
    return model.eval()


def dense(deltas) -> dict[str, torch.Tensor]:
    return {key: delta.dense().detach() for key, delta in deltas.items()}


def test_an_episode_of_several_edits_is_the_batch_edit_of_edit_many(world, monkeypatch):
    """An episode with n_edit=3 calls the editor once, on its 3 edit rows (the retain rows ride along outside the
    edit's loss), and the ΔW it trains on is the one `edit_many(mode="batch")` computes from the same 3 requests."""
    tokenizer, items, base = world
    model = lime_model(base)
    episode = EpisodeDataset(items, LANGUAGES, n_edit=3, n_retain=2, num_episodes=4, seed=4)[3]
    assert len({example["language"] for example in episode["edit"]}) > 1  # a batch in several languages
    batch = EpisodeCollator(tokenizer, "masked_lm")([episode])
    tuner, calls = model.base_model, []
    compute_edit = tuner.compute_edit

    def spy(inputs, *args, **kwargs):
        output = compute_edit(inputs, *args, **kwargs)
        calls.append((inputs["input_ids"].shape[0], dense(output.deltas)))
        return output

    monkeypatch.setattr(tuner, "compute_edit", spy)
    with torch.enable_grad():
        run_episode(model, batch, "masked_lm", c_edit=1.0, c_loc=1.0, c_l0=1.0)
    monkeypatch.undo()
    assert [rows for rows, _ in calls] == [3]
    requests = [(example["prompt"], example["target"], example["language"]) for example in episode["edit"]]
    group = LimeEditor(model, tokenizer, task="masked_lm").edit_many(requests, mode="batch")
    assert len(group.edits) == 1
    trained, made = calls[0][1], dense(group.edits[0].deltas)
    assert trained.keys() == made.keys()
    for key in trained:
        torch.testing.assert_close(made[key], trained[key], rtol=1e-5, atol=1e-7)
    group.revert()


def _named_base(world, folder: Path):
    from transformers import AutoModelForMaskedLM

    tokenizer, _, base = world
    base.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return AutoModelForMaskedLM.from_pretrained(folder).eval()


def test_the_trained_batch_size_is_saved_with_the_editor(world, tmp_path):
    tokenizer, items, _ = world
    model = get_peft_model(_named_base(world, tmp_path / "base"), LimeConfig(languages=LANGUAGES, mend_rank=8))
    args = LimeTrainingArguments(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2,
                                 save_strategy="no", use_cpu=True, report_to="none", n_edit=2)  # fmt: skip
    trainer = LimeTrainer(
        model=model,
        args=args,
        processing_class=tokenizer,
        data_collator=EpisodeCollator(tokenizer, "masked_lm"),
        train_dataset=EpisodeDataset(items, LANGUAGES, n_edit=3, n_retain=2, num_episodes=4),  # the dataset's wins
    )
    assert trainer.episode_settings() == {"n_edit": 3, "n_retain": 2, "n_update": 1, "edit_batch_size": 6}
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    loaded = LimeEditor.from_pretrained(tmp_path / "saved")
    assert loaded.training_info["n_edit"] == 3 and loaded.trained_edit_batch_size == 6
    assert "**n_edit:** 3" in (tmp_path / "saved" / "README.md").read_text()


def test_items_given_to_the_trainer_are_episodes_of_the_arguments_n_edit(world, tmp_path):
    tokenizer, items, base = world
    args = LimeTrainingArguments(output_dir=str(tmp_path), max_steps=1, use_cpu=True, report_to="none", n_edit=2,
                                 n_retain=2, per_device_train_batch_size=1)  # fmt: skip
    trainer = LimeTrainer(model=lime_model(base), args=args, train_dataset=items,
                          data_collator=EpisodeCollator(tokenizer, "masked_lm"))  # fmt: skip
    assert len(trainer.train_dataset[0]["edit"]) == 2
    assert trainer.episode_settings()["edit_batch_size"] == 2


def test_edit_many_warns_once_about_batches_larger_than_trained_for():
    editor = mend_editor()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        editor.edit_many(REQUESTS).revert()  # no training_info: nothing to compare with
        editor.training_info = {"n_edit": 2, "edit_batch_size": 2}
        assert editor.trained_edit_batch_size == 2
        editor.edit_many(REQUESTS[:2]).revert()
        editor.edit_many(REQUESTS, mode="sequential").revert()  # one edit per call
    with pytest.warns(UserWarning, match=r"trained to make 2 edit\(s\) at once.*this batch makes 4.*n_edit=4"):
        editor.edit_many(REQUESTS, batch_size=2).revert()  # chunks are still computed together on one model
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        editor.edit_many(REQUESTS).revert()  # once per editor
    editor.training_info = {"n_edit": 1}  # older saves: n_edit alone
    assert editor.trained_edit_batch_size == 1
    editor.training_info = {"n_edit": "many"}
    assert editor.trained_edit_batch_size is None


def test_train_lime_takes_n_edit(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("train_lime_script", REPO_ROOT / "examples" / "train_lime.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "train_lime_script", module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    argv = ["train_lime.py", "--model_name_or_path", "m", "--output_dir", str(tmp_path), "--n_edit", "4",
            "--languages", "en", "fr", "--use_cpu"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    _, _, args = module.parse_arguments()
    assert args.n_edit == 4
