"""`accelerate launch --multi_gpu --num_processes 2 examples/train_lime.py` on CPU: two gloo processes with DDP,
training a LiME-MEND editor on real mLAMA data (a tiny model with the real mBERT vocabulary, three languages)."""

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
