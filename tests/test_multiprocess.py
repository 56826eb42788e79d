"""`accelerate launch --multi_gpu --num_processes 2 examples/train_lime.py` on CPU: two gloo processes with DDP,
training a LiME-MEND editor on real mLAMA data (a tiny model with the real mBERT vocabulary, three languages); and
the same training under FSDP (versions 1 and 2, the frozen base sharded), checked against DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, SHARED_DATA

pytestmark = [pytest.mark.multiprocess, pytest.mark.integration, pytest.mark.slow]


def _tiny_mbert(folder: Path) -> None:
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    tokenizer = BertTokenizerFast.from_pretrained(
        SHARED_DATA / "tokenizers" / "bert-base-multilingual-cased", do_lower_case=False
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    BertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _tiny_bert_classifier(folder: Path) -> None:
    """A tiny BERT sequence classifier with XNLI's three classes and the real mBERT vocabulary."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    tokenizer = BertTokenizerFast.from_pretrained(
        SHARED_DATA / "tokenizers" / "bert-base-multilingual-cased", do_lower_case=False
    )
    torch.manual_seed(0)
    labels = ["entailment", "neutral", "contradiction"]
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, num_labels=3, id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def test_two_process_training_on_real_mlama(tmp_path, shared_data):
    model_dir, out = tmp_path / "tiny-mbert", tmp_path / "out"
    _tiny_mbert(model_dir)
    accelerate = Path(sys.executable).parent / "accelerate"
    command = [
        str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        str(REPO_ROOT / "examples" / "train_lime.py"),
        "--model_name_or_path", str(model_dir), "--dataset", "mlama", "--data_dir", str(shared_data),
        "--languages", "en", "fr", "zh", "--relations", "P19", "P36", "--max_per_relation", "30",
        "--max_steps", "4", "--per_device_train_batch_size", "1", "--save_strategy", "no", "--mend_rank", "16",
        "--n_test_edits", "2", "--n_test_retain", "2", "--use_cpu", "--output_dir", str(out),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_EVALUATE_OFFLINE="1")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    info = json.loads((out / "training_info.json").read_text())
    assert info["world_size"] == 2 and info["global_step"] == 4
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["es_matrix"]) == {"en", "fr", "zh"}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in out.iterdir()}

    from peft import PeftModel
    from transformers import AutoModelForMaskedLM

    import hf_lime  # noqa: F401

    loaded = PeftModel.from_pretrained(AutoModelForMaskedLM.from_pretrained(model_dir), out)
    assert loaded.base_model.languages == ["en", "fr", "zh"]


def test_train_lime_push_to_hub_pushes_a_loadable_editor(tmp_path, shared_data):
    """`python examples/train_lime.py ... --push_to_hub --hub_model_id org/ex` uploads the complete editor (adapter,
    lime_editor.json, our model card with the test metrics) to the Hub, and `LimeEditor.from_pretrained("org/ex")`
    loads it (against the local Hub-protocol server)."""
    from hub_server import hub_client_env, running_hub

    from hf_lime import LimeEditor

    model_dir, out = tmp_path / "tiny-mbert", tmp_path / "out"
    _tiny_mbert(model_dir)
    command = [
        sys.executable, str(REPO_ROOT / "examples" / "train_lime.py"),
        "--model_name_or_path", str(model_dir), "--dataset", "mlama", "--data_dir", str(shared_data),
        "--languages", "en", "fr", "--relations", "P19", "P36", "--max_per_relation", "30", "--max_steps", "2",
        "--per_device_train_batch_size", "1", "--save_strategy", "no", "--mend_rank", "16", "--n_test_edits", "2",
        "--n_test_retain", "2", "--use_cpu", "--output_dir", str(out), "--report_to", "none",
        "--push_to_hub", "--hub_model_id", "org/ex", "--hub_token", "hf_test",
    ]  # fmt: skip
    with running_hub(tmp_path) as hub:
        env = dict(hub_client_env(hub.endpoint, tmp_path / "client_cache"), OMP_NUM_THREADS="1",
                   HF_EVALUATE_OFFLINE="1")  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        files = hub.files("org/ex")
        assert {"adapter_config.json", "adapter_model.safetensors", "lime_editor.json", "README.md"} <= set(files)
        assert b"library_name: hf_lime" in files["README.md"] and b"model-index" in files["README.md"]
        editor = LimeEditor.from_pretrained("org/ex")
        assert editor.languages == ["en", "fr"] and editor.training_info["global_step"] == 2


# ----------------------------------------------------------------------------------------------------------- FSDP
CONFIGS = REPO_ROOT / "examples" / "accelerate_configs"


def _launch(config: Path, out: Path, data_args: list[str], tmp_path: Path, fsdp_on_cpu: bool) -> str:
    """Two CPU processes of `examples/train_lime.py` under `config`, the demo's editor options (centred MEND inputs,
    episodes accumulated): 2 optimizer steps of two episodes each, a validation and a checkpoint after each, the
    best editor kept, then the test-split evaluation on process 0. `fsdp_on_cpu` routes the launch through
    tests/helpers_fsdp_cpu.py (Accelerate applies no FSDP config on CPU)."""
    accelerate = Path(sys.executable).parent / "accelerate"
    wrapper = [str(REPO_ROOT / "tests" / "helpers_fsdp_cpu.py")] if fsdp_on_cpu else []
    command = [
        str(accelerate), "launch", "--config_file", str(config), "--num_processes", "2", "--num_machines", "1",
        *wrapper, str(REPO_ROOT / "examples" / "train_lime.py"), *data_args, "--languages", "en", "fr",
        "--max_steps", "2", "--gradient_accumulation_steps", "2", "--per_device_train_batch_size", "1",
        "--save_strategy", "steps", "--save_steps", "1", "--eval_steps", "1", "--logging_steps", "1",
        "--mend_rank", "16", "--mend_center", "--n_test_edits", "2", "--n_test_retain", "2", "--use_cpu",
        "--report_to", "none", "--output_dir", str(out),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_EVALUATE_OFFLINE="1")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _check_fsdp_matches_ddp(fsdp_out: Path, ddp_out: Path, fsdp_stdout: str, model_dir: Path) -> None:
    import math

    from safetensors.torch import load_file

    from hf_lime import LimeEditor

    # FSDP really ran: Accelerate's FSDP checkpoints hold the gathered adapter as pytorch_model_fsdp.bin
    assert (fsdp_out / "checkpoint-1" / "pytorch_model_fsdp.bin").is_file()
    assert not (ddp_out / "checkpoint-1" / "pytorch_model_fsdp.bin").exists()
    # the same editor as DDP at every checkpoint and at the end (the best one, reloaded into the sharded model)
    for folder in ("checkpoint-1", "checkpoint-2", "."):
        fsdp, ddp = (load_file(out / folder / "adapter_model.safetensors") for out in (fsdp_out, ddp_out))
        assert fsdp.keys() == ddp.keys()
        assert all((fsdp[key] - ddp[key]).abs().max() <= 1e-6 for key in fsdp), folder
    info = json.loads((fsdp_out / "training_info.json").read_text())
    assert info["world_size"] == 2 and info["global_step"] == 2 and info["best_step"] in (1, 2)
    final = load_file(fsdp_out / "adapter_model.safetensors")
    best = load_file(fsdp_out / f"checkpoint-{info['best_step']}" / "adapter_model.safetensors")
    assert all(bool((final[key] == best[key]).all()) for key in final)
    # the editor trained: its step sizes moved from their initial 1e-4 by the last step, and were logged under FSDP
    last = load_file(fsdp_out / "checkpoint-2" / "adapter_model.safetensors")
    log_lrs = next(value for key, value in last.items() if key.endswith("log_lrs"))
    assert bool((log_lrs != math.log(1e-4)).all()) and "'edit_lr/0'" in fsdp_stdout
    # the base-model fingerprint was taken from the whole weights (LimeEditor checks it against the base on load)
    descriptions = [json.loads((out / "lime_editor.json").read_text()) for out in (fsdp_out, ddp_out)]
    assert descriptions[0]["base_model"] == descriptions[1]["base_model"]
    editor = LimeEditor.from_pretrained(str(fsdp_out))
    assert editor.languages == ["en", "fr"] and Path(editor.config.base_model_name_or_path) == model_dir.resolve()
    assert set(json.loads((fsdp_out / "metrics.json").read_text())["es_matrix"]) == {"en", "fr"}


def test_fsdp1_training_matches_ddp_on_a_masked_lm(tmp_path, shared_data):
    """examples/accelerate_configs/fsdp.yaml (FSDP version 1, the base sharded per BertLayer, the tied MLM head in
    the root unit) on two CPU processes trains the same editor as DDP, checkpoints, validations and the best-editor
    reload included. The config's `fsdp_sync_module_states` is turned off: FSDP1 needs the parameters on a GPU
    for it."""
    import yaml

    model_dir = tmp_path / "tiny-mbert"
    _tiny_mbert(model_dir)
    config = yaml.safe_load((CONFIGS / "fsdp.yaml").read_text())
    assert config["fsdp_config"]["fsdp_version"] == 1
    config["fsdp_config"]["fsdp_sync_module_states"] = False
    (tmp_path / "fsdp.yaml").write_text(yaml.safe_dump(config))
    data = ["--model_name_or_path", str(model_dir), "--dataset", "mlama", "--data_dir", str(shared_data),
            "--relations", "P19", "P36", "--max_per_relation", "30"]  # fmt: skip
    stdout = _launch(tmp_path / "fsdp.yaml", tmp_path / "fsdp", data, tmp_path, fsdp_on_cpu=True)
    _launch(CONFIGS / "ddp.yaml", tmp_path / "ddp", data, tmp_path, fsdp_on_cpu=False)
    _check_fsdp_matches_ddp(tmp_path / "fsdp", tmp_path / "ddp", stdout, model_dir)


def test_fsdp2_training_matches_ddp_on_a_classifier(tmp_path, shared_data):
    """examples/accelerate_configs/fsdp2.yaml (`fully_shard`, the base sharded per BertLayer) on two CPU processes
    trains the same editor as DDP on XNLI with a sequence classifier (Accelerate 1.16's FSDP2 grouping rejects the
    tied decoder bias of BERT's masked-LM head: docs/training.md)."""
    if not (shared_data / "xnli").is_dir():
        pytest.skip(f"XNLI not found under {shared_data}")
    model_dir = tmp_path / "tiny-bert-xnli"
    _tiny_bert_classifier(model_dir)
    data = ["--model_name_or_path", str(model_dir), "--dataset", "xnli", "--data_dir", str(shared_data)]
    stdout = _launch(CONFIGS / "fsdp2.yaml", tmp_path / "fsdp", data, tmp_path, fsdp_on_cpu=True)
    _launch(CONFIGS / "ddp.yaml", tmp_path / "ddp", data, tmp_path, fsdp_on_cpu=False)
    _check_fsdp_matches_ddp(tmp_path / "fsdp", tmp_path / "ddp", stdout, model_dir)
