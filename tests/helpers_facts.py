"""A tiny synthetic parallel fact world: a word-level tokenizer, items in the common schema, and a tiny masked LM
pre-trained to know the facts (so that edits have something to change). Used by trainer and harness tests."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

LANGUAGES = ["en", "fr", "de"]
TEMPLATES = {"en": "[X] was born in [Y] .", "fr": "[X] est né à [Y] .", "de": "[X] ist in [Y] geboren ."}
N_SUBJECTS, N_OBJECTS = 24, 6


def build_fact_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({w for t in TEMPLATES.values() for w in t.split() if w not in ("[X]", "[Y]")})
    words += [f"subj{i}" for i in range(N_SUBJECTS)] + [f"city{i}" for i in range(N_OBJECTS)]
    vocab = {w: i for i, w in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def fact_items() -> list[dict]:
    items = []
    for s in range(N_SUBJECTS):
        city = f"city{s % N_OBJECTS}"
        items.append({
            "id": f"P19:{s}", "source": "mlama", "relation": "P19", "group": f"subj{s}", "target_id": city,
            "languages": list(LANGUAGES),
            "prompts": [TEMPLATES[lang].replace("[X]", f"subj{s}") for lang in LANGUAGES],
            "pairs": ["" for _ in LANGUAGES], "targets": [city for _ in LANGUAGES],
        })  # fmt: skip
    return items


def pretrained_fact_model(tokenizer, items, steps: int = 150, seed: int = 0) -> BertForMaskedLM:
    """A tiny BERT MLM trained until it completes the facts (a few seconds on CPU)."""
    from hf_lime.data.encoding import encode_example, pad_batch

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32, attn_implementation="eager",
    )  # fmt: skip
    model = BertForMaskedLM(config)
    examples = [
        encode_example(tokenizer, "masked_lm", p, t)
        for it in items
        for p, t in zip(it["prompts"], it["targets"], strict=True)
    ]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(examples), (16,), generator=g).tolist()
        loss = model(**pad_batch(tokenizer, [examples[i] for i in idx])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()
