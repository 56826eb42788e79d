"""`LimeConfig`: round trip, defaults and every rejected value."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import build_model
from peft import PeftConfig, get_peft_model

from hf_lime import LimeConfig


def test_round_trip_through_json(tmp_path):
    config = LimeConfig(languages=["en", "zh"], editor="mend", mend_rank=8, mask_stretch=(-0.2, 1.2))
    config.save_pretrained(tmp_path)
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, LimeConfig)
    assert loaded.peft_type == "LIME"
    assert loaded.languages == ["en", "zh"] and loaded.mend_rank == 8 and loaded.mask_stretch == (-0.2, 1.2)


def test_every_field_has_help_and_is_documented():
    doc = LimeConfig.__doc__
    own = [f for f in dataclasses.fields(LimeConfig) if f.name not in dataclasses.fields(PeftConfig.__mro__[0])]
    names = {f.name for f in dataclasses.fields(PeftConfig)}
    for f in own:
        if f.name in names:
            continue
        assert f.metadata.get("help"), f.name
        assert f"{f.name} (`" in doc, f"{f.name} missing from the docstring"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"languages": []}, "languages` is empty"),
        ({"languages": ["en", "en"]}, r"duplicate languages \['en'\]"),
        ({"languages": ["en", ""]}, "non-empty language codes"),
        ({"languages": ["en"], "editor": "rome"}, "editor"),
        ({"languages": ["en"], "mend_rank": 0}, "mend_rank"),
        ({"languages": ["en"], "mend_n_hidden": -1}, "mend_n_hidden"),
        ({"languages": ["en"], "edit_lr_init": -1.0}, "edit_lr_init"),
        ({"languages": ["en"], "edit_lr_init": float("nan")}, "edit_lr_init"),
        ({"languages": ["en"], "mask_init_drop_rate": 1.0}, "mask_init_drop_rate"),
        ({"languages": ["en"], "mask_stretch": (0.1, 1.1)}, "mask_stretch"),
        ({"languages": ["en"], "mask_stretch": (-0.1,)}, "mask_stretch"),
        ({"languages": ["en"], "ft_optimizer": "lbfgs"}, "ft_optimizer"),
        ({"languages": ["en"], "ke_conditioner": "gru"}, "ke_conditioner"),
        ({"languages": ["en"], "mend_compute_dtype": "float16"}, r"mend_compute_dtype` must be one of \['float32', "),
        ({"languages": ["en"], "ft_loc_coef": -1.0}, "ft_loc_coef"),
        ({"languages": ["en"], "layers_pattern": "layer"}, "layers_to_transform"),
        ({"languages": ["en"], "num_top_layers": 0}, "num_top_layers"),
    ],
)
def test_bad_values_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LimeConfig(**kwargs)


def test_languages_optional_without_masks():
    assert LimeConfig(use_lime_mask=False).languages == []


def test_unknown_model_type_needs_target_modules():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="target_modules"):
        get_peft_model(model, LimeConfig(languages=["en"]))


def test_target_module_not_found():
    with pytest.raises(ValueError, match="not found|Target modules"):
        get_peft_model(build_model("bert-mlm"), LimeConfig(languages=["en"], target_modules=["nope"]))


def test_target_module_of_wrong_type():
    with pytest.raises(TypeError, match="Linear"):
        get_peft_model(build_model("bert-mlm"), LimeConfig(languages=["en"], target_modules=["LayerNorm"]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_modules": "(.*)*(.*)*(.*)*X$"}, "exponential"),
        ({"target_modules": "((a+)b)+"}, "exponential"),
        ({"target_modules": "(a|a)*"}, "exponential"),
        ({"target_modules": "x" * 2000}, "at most 1000"),
        ({"target_modules": "(unclosed"}, "not a valid regex"),
        ({"ke_hidden_dim": 10**9}, "at most"),
        ({"mend_n_hidden": 10**6}, "at most 16"),
        ({"mend_rank": 10**8}, "at most"),
        ({"ft_steps": 10**9}, "at most"),
    ],
)
def test_hostile_sizes_and_regexes_are_refused_at_once(kwargs, match):
    # refused by the config's own validation: no model is built and no module name is ever matched
    with pytest.raises(ValueError, match=match):
        LimeConfig(languages=["en"], **kwargs)


def test_safe_regexes_and_lists_pass():
    LimeConfig(languages=["en"], target_modules=r".*\.(9|10|11)\.(intermediate\.dense|output\.dense)")
    LimeConfig(languages=["en"], target_modules=["intermediate.dense", "output.dense"])
    LimeConfig(languages=["en"], target_modules=r"(?:x)+")


def test_ke_width_is_capped_by_the_base_model():
    from conftest import build_model
    from peft import get_peft_model

    with pytest.raises(ValueError, match="16x the base model's hidden size"):
        get_peft_model(build_model("bert-mlm"), LimeConfig(languages=["en"], editor="ke", ke_hidden_dim=4096))
