"""Shared fixtures: tiny models of each supported family, built from configs, and edit batches for them."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HF_LIME_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
VOCAB = 64


@dataclass
class Family:
    name: str
    build: Callable[[], torch.nn.Module]
    task: str  # "masked_lm" | "seq_cls" | "causal_lm"


def _bert_mlm():
    from transformers import BertConfig, BertForMaskedLM

    return BertForMaskedLM(_small(BertConfig))


def _bert_cls():
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(_small(BertConfig, num_labels=3))


def _xlmr_mlm():
    from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

    return XLMRobertaForMaskedLM(_small(XLMRobertaConfig, pad_token_id=1))


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=3, n_head=2, n_positions=32, attn_implementation="eager")
    return GPT2LMHeadModel(cfg)


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(cfg)


def _small(config_cls, **kwargs):
    return config_cls(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        attn_implementation="eager",
        **kwargs,
    )


FAMILIES = {
    "bert-mlm": Family("bert-mlm", _bert_mlm, "masked_lm"),
    "bert-cls": Family("bert-cls", _bert_cls, "seq_cls"),
    "xlmr-mlm": Family("xlmr-mlm", _xlmr_mlm, "masked_lm"),
    "gpt2": Family("gpt2", _gpt2, "causal_lm"),
    "llama": Family("llama", _llama, "causal_lm"),
}


def build_model(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return FAMILIES[family].build().eval()


def make_batch(task: str, batch_size: int = 2, seq_len: int = 8, seed: int = 0, target: int = 7) -> dict:
    """An edit batch: random ids with `labels` marking a new target for the task kind."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, VOCAB, (batch_size, seq_len), generator=g)
    attention_mask = torch.ones_like(input_ids)
    if task == "seq_cls":
        labels = torch.full((batch_size,), 2, dtype=torch.long)
    else:
        labels = torch.full_like(input_ids, -100)
        if task == "masked_lm":
            input_ids[:, 3] = 4  # the "mask" token of these tiny models
            labels[:, 3] = target
        else:
            labels[:, -2:] = torch.tensor([target, target + 1])
            input_ids[:, -2:] = labels[:, -2:]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for servers the tests launch)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "mlama1.1").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set HF_LIME_DATA_DIR); CI always has it")
    return SHARED_DATA
