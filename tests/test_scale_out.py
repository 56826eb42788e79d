"""The pure logic behind `LimeTrainer` under FSDP (the two-process runs themselves: tests/test_multiprocess.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml
from conftest import REPO_ROOT
from torch import nn

from hf_lime.trainer.episode import _root_kept_unsharded
from hf_lime.trainer.trainer import _check_fsdp_plugin, _with_adapter_name
from hf_lime.tuner.model import CONTAINERS, _key, unwrapped_name


def test_layer_keys_ignore_the_wrappers_fsdp_and_checkpointing_insert():
    name = "bert.encoder.layer.1._fsdp_wrapped_module._checkpoint_wrapped_module.intermediate.dense"
    assert unwrapped_name(name) == "bert.encoder.layer.1.intermediate.dense"
    assert _key(name) == _key("bert.encoder.layer.1.intermediate.dense") == "bert-encoder-layer-1-intermediate-dense"


def test_saved_editor_entries_get_the_adapter_name_back():
    assert _with_adapter_name("base_model.lime_masks.masks.l0.scale", "default", CONTAINERS) == (
        "base_model.lime_masks.default.masks.l0.scale"
    )
    assert (
        _with_adapter_name("base_model.lime_edit_lrs.log_lrs", "x", CONTAINERS) == "base_model.lime_edit_lrs.x.log_lrs"
    )
    assert _with_adapter_name("base_model.model.bert.pooler.dense.weight", "x", CONTAINERS).count(".x.") == 0


def _plugin(**overrides):
    values = {"state_dict_type": "StateDictType.FULL_STATE_DICT", "fsdp_version": 1, "use_orig_params": True}
    return SimpleNamespace(**{**values, **overrides})


def test_fsdp_plugin_checks_name_the_config_key_to_fix():
    _check_fsdp_plugin(_plugin())
    _check_fsdp_plugin(_plugin(fsdp_version=2, use_orig_params=False))  # FSDP2 has no flat parameters
    with pytest.raises(ValueError, match="fsdp_state_dict_type: FULL_STATE_DICT"):
        _check_fsdp_plugin(_plugin(state_dict_type="StateDictType.SHARDED_STATE_DICT"))
    with pytest.raises(ValueError, match="fsdp_use_orig_params: true"):
        _check_fsdp_plugin(_plugin(use_orig_params=False))


def test_root_kept_unsharded_leaves_a_model_without_fsdp_alone():
    model = nn.Linear(2, 2)
    with _root_kept_unsharded(model):
        pass
    assert not hasattr(model, "set_reshard_after_backward")


@pytest.mark.parametrize("name", ["ddp.yaml", "fsdp.yaml", "fsdp2.yaml"])
def test_shipped_accelerate_configs_are_what_lime_trainer_needs(name):
    config = yaml.safe_load((REPO_ROOT / "examples" / "accelerate_configs" / name).read_text())
    assert config["num_processes"] == 2 and config["num_machines"] == 1
    if name == "ddp.yaml":
        assert config["distributed_type"] == "MULTI_GPU"
        return
    fsdp = config["fsdp_config"]
    assert config["distributed_type"] == "FSDP" and fsdp["fsdp_version"] == (1 if name == "fsdp.yaml" else 2)
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    if fsdp["fsdp_version"] == 1:
        assert fsdp["fsdp_use_orig_params"] is True
