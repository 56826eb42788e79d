"""Edits exported as plain PEFT LoRA adapters: exact factors, and applied by `peft` in a process without hf_lime."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_model, make_batch
from peft import get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

from hf_lime import Edit, LayerDelta, LimeConfig
from hf_lime.editor import LimeEditor
from hf_lime.lora_export import export_edits_as_lora, stacked_factors

LANGS = ["en", "fr"]
MEND = {"languages": LANGS, "edit_lr_init": 1.0}
DENSE_FT = {"editor": "ft", "ft_optimizer": "adam", "ft_lr": 0.05, "ft_steps": 3, "ft_early_stop": False,
            "use_lime_mask": False, "languages": []}  # fmt: skip

# Runs with peft + transformers only: importing hf_lime fails there.
CHILD = r"""
import json, sys

class BlockHfLime:
    def find_spec(self, name, path=None, target=None):
        if name == "hf_lime" or name.startswith("hf_lime."):
            raise ImportError("applying an exported LoRA must not need hf_lime")

sys.meta_path.insert(0, BlockHfLime())
import torch, transformers
from peft import PeftModel
from safetensors.torch import load_file

results = {}
for case in json.loads(sys.argv[1]):
    base = getattr(transformers, case["auto"]).from_pretrained(case["base"]).eval()
    model = PeftModel.from_pretrained(base, case["lora"]).eval()
    data = load_file(case["data"])
    inputs = {"input_ids": data["input_ids"], "attention_mask": data["attention_mask"]}
    with torch.no_grad():
        adapter = model(**inputs).logits
        merged = model.merge_and_unload()(**inputs).logits
    results[case["name"]] = {
        "adapter": float((adapter - data["expected"]).abs().max()),
        "merged": float((merged - data["expected"]).abs().max()),
    }
assert "hf_lime" not in sys.modules
print(json.dumps(results))
"""


def base_dir(tmp_path: Path, family: str) -> Path:
    path = tmp_path / f"base-{family}"
    if not path.exists():
        build_model(family).save_pretrained(path)
    return path


def lime_on_saved_base(tmp_path: Path, family: str, **config):
    auto = AutoModelForCausalLM if family == "gpt2" else AutoModelForMaskedLM
    base = auto.from_pretrained(base_dir(tmp_path, family)).eval()
    return get_peft_model(base, LimeConfig(**config))


def forward(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def mixed_rank_edit(model) -> Edit:
    """A hand-made edit whose layers have ranks 1, 2, 3 ... (exercises the zero padding to one global r)."""
    g = torch.Generator().manual_seed(0)
    deltas = {}
    for rank, (key, layer) in enumerate(model.base_model.lime_layers.items(), start=1):
        B = torch.randn(layer.out_features, rank, generator=g) * 0.3
        deltas[key] = LayerDelta(B, torch.randn(rank, layer.in_features, generator=g) * 0.3)
    return Edit(deltas, model.base_model.lime_layers).apply()


# ----------------------------------------------------------------------------------------------- factors
def test_stacked_factors_sum_the_edits_and_factorise_dense_updates_exactly():
    model = get_peft_model(build_model("bert-mlm"), LimeConfig(**DENSE_FT))
    dense = model.base_model.edit(make_batch("masked_lm", seed=1))
    assert all(d.A is None for d in dense.deltas.values())  # Adam fine-tuning: a dense update
    low_rank = mixed_rank_edit(model)
    factors, conv = stacked_factors([dense, low_rank])
    assert not any(conv.values())
    for key in dense.deltas:
        B, A = factors[key.replace("-", ".")]
        expected = dense.deltas[key].dense() + low_rank.deltas[key].dense()
        torch.testing.assert_close(B @ A, expected, atol=1e-5, rtol=1e-5)


def test_exported_files_are_a_plain_lora_adapter(tmp_path):
    model = get_peft_model(build_model("gpt2"), LimeConfig(**MEND))
    edit = mixed_rank_edit(model)
    folder = edit.to_lora(tmp_path / "lora", base_model_name_or_path="org/tiny-gpt2", revision="abc")
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((folder / "adapter_config.json").read_text())
    names = sorted(key.replace("-", ".") for key in edit.deltas)
    assert config["peft_type"] == "LORA" and config["r"] == config["lora_alpha"] == len(names)  # max rank
    assert sorted(config["target_modules"]) == names and config["fan_in_fan_out"]  # GPT-2's Conv1D
    assert (config["base_model_name_or_path"], config["revision"]) == ("org/tiny-gpt2", "abc")
    tensors = load_file(folder / "adapter_model.safetensors")
    assert len(tensors) == 2 * len(names)
    first = names[0]  # rank 1 in `mixed_rank_edit`, padded with zeros up to r
    A, B = tensors[f"base_model.model.{first}.lora_A.weight"], tensors[f"base_model.model.{first}.lora_B.weight"]
    assert A.shape[0] == B.shape[1] == len(names)
    assert not A[1:].any() and not B[:, 1:].any()


def test_export_errors_and_the_editor_shortcut(tmp_path):
    model = get_peft_model(build_model("bert-mlm"), LimeConfig(**MEND))
    edit = model.base_model.edit(make_batch("masked_lm"), language="en")
    with pytest.raises(ValueError, match="base_model_name_or_path="):
        edit.to_lora(tmp_path / "lora", base_model_name_or_path="")
    with pytest.raises(TypeError, match="non-empty sequence of Edit"):
        export_edits_as_lora([], tmp_path / "lora", base_model_name_or_path="org/x")
    assert not (tmp_path / "lora").exists()
    editor = LimeEditor(model)
    with pytest.raises(ValueError, match="base_model_name_or_path="):
        editor.export_lora(edit, tmp_path / "lora")
    editor.config.base_model_name_or_path = "org/tiny-bert"
    folder = editor.export_lora([edit], tmp_path / "lora")
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/tiny-bert"


def test_only_edits_the_model_holds_are_exported(tmp_path):
    """A reverted edit (by `revert()` or by `revert_all()` behind its back) or one never applied is refused by every
    export path, naming its state; nothing is written. Groups export as their edits."""
    model = get_peft_model(build_model("bert-mlm"), LimeConfig(**MEND))
    editor = LimeEditor(model)
    editor.config.base_model_name_or_path = "org/tiny-bert"
    first = model.base_model.edit(make_batch("masked_lm"), language="en")
    second = model.base_model.edit(make_batch("masked_lm", seed=1), language="fr")
    first.revert()
    never = Edit(first.deltas, model.base_model.lime_layers)
    for edits, state in (([second, first], "reverted"), ([never], "created")):
        with pytest.raises(ValueError, match=f"it is {state}, so the model does not hold it"):
            export_edits_as_lora(edits, tmp_path / "lora", base_model_name_or_path="org/x")
        with pytest.raises(ValueError, match=f"it is {state}"):
            editor.export_lora(edits, tmp_path / "lora")
    model.base_model.revert_all()  # behind `second`'s back
    with pytest.raises(ValueError, match="Cannot export edit .* reverted"):
        second.to_lora(tmp_path / "lora", base_model_name_or_path="org/x")
    with pytest.raises(ValueError, match="it is reverted"):
        editor.export_lora(second, tmp_path / "lora")
    assert not (tmp_path / "lora").exists()
    group = model.base_model.edit_many([make_batch("masked_lm"), make_batch("masked_lm", seed=1)], ["en", "fr"])
    factors, _ = stacked_factors(group.edits)
    folder = export_edits_as_lora(group, tmp_path / "lora", base_model_name_or_path="org/x")
    assert editor.export_lora([group], tmp_path / "lora-2").is_dir()
    tensors = load_file(folder / "adapter_model.safetensors")
    name, (B, A) = next(iter(factors.items()))
    assert torch.equal(tensors[f"base_model.model.{name}.lora_A.weight"][: A.shape[0]], A)


def test_to_lora_knows_the_base_model_it_was_made_on(tmp_path):
    build_model("bert-mlm").save_pretrained(tmp_path / "base")
    from transformers import AutoModelForMaskedLM

    base = AutoModelForMaskedLM.from_pretrained(tmp_path / "base")
    model = get_peft_model(base, LimeConfig(**MEND))
    edit = model.base_model.edit(make_batch("masked_lm"), language="en")
    assert edit.base_model_name_or_path == str(tmp_path / "base")
    folder = edit.to_lora(tmp_path / "lora")  # no other argument
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        tmp_path / "base"
    )


# ----------------------------------------------------------------------------------------------- plain peft
def _case(tmp_path: Path, name: str, family: str, edits, model, batch, clean) -> dict:
    expected = forward(model, batch)
    assert (expected - clean).abs().max() > 1e-3, f"{name}: the edit must change the outputs"
    base = base_dir(tmp_path, family)
    lora = export_edits_as_lora(edits, tmp_path / f"lora-{name}", base_model_name_or_path=str(base))
    data = tmp_path / f"data-{name}.safetensors"
    save_file({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "expected": expected}, data)
    auto = "AutoModelForCausalLM" if family == "gpt2" else "AutoModelForMaskedLM"
    return {"name": name, "auto": auto, "base": str(base), "lora": str(lora), "data": str(data)}


def test_exported_lora_reproduces_the_edit_with_plain_peft(tmp_path):
    cases = []
    for name, family, config in [("mend-bert", "bert-mlm", MEND), ("mend-gpt2", "gpt2", MEND),
                                 ("dense-ft-bert", "bert-mlm", DENSE_FT)]:  # fmt: skip
        model = lime_on_saved_base(tmp_path, family, **config)
        task = "causal_lm" if family == "gpt2" else "masked_lm"
        batch, clean = make_batch(task, seed=3), None
        clean = forward(model, batch)
        edit = model.base_model.edit(make_batch(task), language="en" if config.get("languages") else None)
        cases.append(_case(tmp_path, name, family, [edit], model, batch, clean))
    model = lime_on_saved_base(tmp_path, "bert-mlm", **MEND)
    batch = make_batch("masked_lm", seed=3)
    clean = forward(model, batch)
    first = model.base_model.edit(make_batch("masked_lm", batch_size=1), language="en")
    second = model.base_model.edit(make_batch("masked_lm", seed=2, target=9), language="fr")
    cases.append(_case(tmp_path, "stacked-bert", "bert-mlm", [first, second], model, batch, clean))
    model = lime_on_saved_base(tmp_path, "bert-mlm", **MEND)
    clean = forward(model, batch)
    cases.append(_case(tmp_path, "mixed-rank-bert", "bert-mlm", [mixed_rank_edit(model)], model, batch, clean))

    run = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(cases)], capture_output=True, text=True, timeout=300, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    assert sorted(results) == sorted(case["name"] for case in cases)
    for name, errors in results.items():
        assert errors["adapter"] < 1e-5 and errors["merged"] < 1e-4, (name, errors)
