"""Tests for hf_lime.data.encoding: masked-LM, causal-LM and classification inputs, padding, predictions."""

import os
from pathlib import Path

import pytest
import torch
from helpers_tokenizers import build_byte_bpe_tokenizer, build_sentencepiece_tokenizer, build_wordpiece_tokenizer

from hf_lime.data.encoding import (
    IGNORE_INDEX,
    encode_example,
    gold_from_batch,
    is_correct,
    label_to_id,
    pad_batch,
    predict_from_logits,
    target_token_ids,
)

MBERT_DIR = Path(os.environ.get("HF_LIME_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
MBERT_DIR = MBERT_DIR / "tokenizers" / "bert-base-multilingual-cased"
LABEL2ID = {"entailment": 0, "neutral": 1, "contradiction": 2}
MASKED_BUILDERS = [build_wordpiece_tokenizer, build_sentencepiece_tokenizer]
ALL_BUILDERS = [*MASKED_BUILDERS, build_byte_bpe_tokenizer]


@pytest.fixture(scope="module")
def mbert():
    if not (MBERT_DIR / "tokenizer.json").is_file():
        pytest.skip(f"mBERT tokenizer not found at {MBERT_DIR} (set HF_LIME_DATA_DIR)")
    from transformers import BertTokenizerFast

    # transformers 5.x lowercases unless told otherwise; the vocabulary is cased.
    return BertTokenizerFast.from_pretrained(str(MBERT_DIR), do_lower_case=False)


def _mask_positions(tok, features):
    return [i for i, token_id in enumerate(features["input_ids"]) if token_id == tok.mask_token_id]


# --- target tokenization -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("builder", ALL_BUILDERS)
@pytest.mark.parametrize("word", ["Paris", "Florence", "Rome", "né"])
def test_target_ids_match_the_word_in_running_text(builder, word):
    tok = builder()
    ids = target_token_ids(tok, word)
    in_context = tok(f"Dante was born in {word} .", add_special_tokens=False)["input_ids"]
    windows = [in_context[i : i + len(ids)] for i in range(len(in_context))]
    assert ids in windows
    assert tok.decode(ids).strip() == word


@pytest.mark.parametrize("builder", ALL_BUILDERS)
def test_multi_piece_targets_have_several_ids(builder):
    assert len(target_token_ids(builder(), "Florence")) == 2
    assert len(target_token_ids(builder(), "Paris")) == 1


@pytest.mark.parametrize("target", ["", "   ", None])
def test_empty_target_is_rejected(target):
    with pytest.raises(ValueError, match="non-empty"):
        target_token_ids(build_wordpiece_tokenizer(), target)


# --- masked_lm -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("builder", MASKED_BUILDERS)
@pytest.mark.parametrize("target", ["Paris", "Florence"])
def test_masked_lm_labels_sit_on_the_masks(builder, target):
    tok = builder()
    features = encode_example(tok, "masked_lm", "Dante was born in [Y] .", target)
    ids = target_token_ids(tok, target)
    masks = _mask_positions(tok, features)
    assert len(masks) == len(ids)
    assert [features["labels"][i] for i in masks] == ids
    assert all(label == IGNORE_INDEX for i, label in enumerate(features["labels"]) if i not in masks)
    assert len(features["labels"]) == len(features["input_ids"]) == len(features["attention_mask"])
    # Filling the masks with the labels gives back the sentence with the target.
    filled = [features["labels"][i] if i in masks else t for i, t in enumerate(features["input_ids"])]
    decoded = tok.decode(filled, skip_special_tokens=True)
    assert decoded.replace(" ", "") == f"Dantewasbornin{target}."


def test_masked_lm_keeps_token_type_ids_when_the_tokenizer_makes_them():
    assert "token_type_ids" in encode_example(build_wordpiece_tokenizer(), "masked_lm", "in [Y] .", "Paris")
    assert "token_type_ids" not in encode_example(build_sentencepiece_tokenizer(), "masked_lm", "in [Y] .", "Paris")


@pytest.mark.parametrize("prompt", ["Dante was born in Paris .", "[Y] and [Y]"])
def test_masked_lm_needs_exactly_one_placeholder(prompt):
    with pytest.raises(ValueError, match=r"\[Y\]"):
        encode_example(build_wordpiece_tokenizer(), "masked_lm", prompt, "Paris")


def test_masked_lm_counts_masks_and_needs_a_mask_token():
    tok = build_wordpiece_tokenizer()
    with pytest.raises(ValueError, match="mask tokens"):
        encode_example(tok, "masked_lm", "[MASK] was born in [Y] .", "Paris")
    with pytest.raises(ValueError, match="mask token"):
        encode_example(build_byte_bpe_tokenizer(), "masked_lm", "born in [Y] .", "Paris")


def test_masked_lm_truncation_keeps_masks_or_refuses():
    tok = build_wordpiece_tokenizer()
    long_tail = " ".join(["the capital of France"] * 10)
    features = encode_example(tok, "masked_lm", f"[Y] is {long_tail} .", "Florence", max_length=12)
    assert len(features["input_ids"]) == 12
    assert len(_mask_positions(tok, features)) == 2
    assert features["input_ids"][-1] == tok.sep_token_id
    with pytest.raises(ValueError, match="cut a mask"):
        encode_example(tok, "masked_lm", f"{long_tail} is [Y] .", "Florence", max_length=12)


# --- causal_lm -----------------------------------------------------------------------------------------------------


def test_causal_lm_is_prompt_then_continuation():
    tok = build_byte_bpe_tokenizer()
    features = encode_example(tok, "causal_lm", "Dante was born in [Y] , Italy .", "Florence")
    prompt_ids = tok("Dante was born in")["input_ids"]
    target_ids = tok(" Florence")["input_ids"]
    assert features["input_ids"] == prompt_ids + target_ids
    assert features["labels"] == [IGNORE_INDEX] * len(prompt_ids) + target_ids
    assert features["attention_mask"] == [1] * len(features["input_ids"])
    assert tok.decode(features["input_ids"]) == "Dante was born in Florence"


def test_causal_lm_without_placeholder_uses_the_whole_prompt():
    tok = build_byte_bpe_tokenizer()
    features = encode_example(tok, "causal_lm", "Dante was born in", "Paris")
    assert tok.decode(features["input_ids"]) == "Dante was born in Paris"
    empty = encode_example(tok, "causal_lm", "[Y] is the capital", "Paris")
    assert empty["input_ids"][0] == tok.bos_token_id and empty["labels"][0] == IGNORE_INDEX


def test_causal_lm_drops_trailing_special_tokens_of_the_prompt():
    tok = build_wordpiece_tokenizer()
    features = encode_example(tok, "causal_lm", "Dante was born in [Y] .", "Paris")
    assert tok.sep_token_id not in features["input_ids"]
    assert features["input_ids"][0] == tok.cls_token_id


def test_causal_lm_truncates_the_prompt_from_the_left():
    tok = build_byte_bpe_tokenizer()
    long_prompt = " ".join(["the capital of France is Paris ."] * 10) + " Dante was born in [Y]"
    features = encode_example(tok, "causal_lm", long_prompt, "Florence", max_length=8)
    assert len(features["input_ids"]) == 8
    assert tok.decode(features["input_ids"]).endswith("Dante was born in Florence")
    with pytest.raises(ValueError, match="max_length"):
        encode_example(tok, "causal_lm", long_prompt, "Florence", max_length=2)


# --- seq_cls -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target,expected", [("neutral", 1), (2, 2), ("0", 0)])
def test_seq_cls_labels(target, expected):
    tok = build_wordpiece_tokenizer()
    features = encode_example(tok, "seq_cls", "a man sleeps", target, pair="a dog runs", label2id=LABEL2ID)
    assert features["labels"] == expected
    sep = features["input_ids"].index(tok.sep_token_id)
    assert features["token_type_ids"][: sep + 1] == [0] * (sep + 1)
    assert set(features["token_type_ids"][sep + 1 :]) == {1}


def test_seq_cls_truncates_to_max_length():
    tok = build_wordpiece_tokenizer()
    premise, hypothesis = "a man sleeps " * 20, "a dog runs " * 20
    features = encode_example(tok, "seq_cls", premise, "neutral", pair=hypothesis, label2id=LABEL2ID, max_length=16)
    assert len(features["input_ids"]) == 16


def test_seq_cls_label_errors():
    with pytest.raises(ValueError, match="contradiction"):
        label_to_id("maybe", LABEL2ID)
    with pytest.raises(ValueError, match="out of range"):
        label_to_id(3, LABEL2ID)
    with pytest.raises(ValueError, match="Unknown class label"):
        label_to_id("entailment")


def test_unknown_task_is_rejected():
    with pytest.raises(ValueError, match="allowed tasks"):
        encode_example(build_wordpiece_tokenizer(), "seq2seq", "in [Y]", "Paris")


# --- pad_batch -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["right", "left"])
def test_pad_batch_pads_each_key_with_its_own_value(side):
    tok = build_wordpiece_tokenizer()
    tok.padding_side = side
    short = encode_example(tok, "masked_lm", "in [Y] .", "Paris")
    long = encode_example(tok, "masked_lm", "Dante was born in [Y] .", "Florence")
    batch = pad_batch(tok, [short, long])
    width = len(long["input_ids"])
    gap = width - len(short["input_ids"])
    assert batch["input_ids"].shape == batch["labels"].shape == (2, width)
    pad_slice = slice(0, gap) if side == "left" else slice(width - gap, width)
    assert batch["input_ids"][0, pad_slice].tolist() == [tok.pad_token_id] * gap
    assert batch["attention_mask"][0, pad_slice].tolist() == [0] * gap
    assert batch["labels"][0, pad_slice].tolist() == [IGNORE_INDEX] * gap
    assert batch["attention_mask"][0].sum().item() == len(short["input_ids"])
    assert batch["labels"][1].tolist() == long["labels"]
    assert gold_from_batch("masked_lm", batch) == [target_token_ids(tok, "Paris"), target_token_ids(tok, "Florence")]


def test_pad_batch_seq_cls_labels_stay_one_dimensional():
    tok = build_wordpiece_tokenizer()
    examples = [encode_example(tok, "seq_cls", "a man", t, pair="a dog runs", label2id=LABEL2ID) for t in (0, 2)]
    batch = pad_batch(tok, examples)
    assert batch["labels"].tolist() == [0, 2]
    assert batch["token_type_ids"].shape == batch["input_ids"].shape


def test_pad_batch_errors():
    tok = build_wordpiece_tokenizer()
    good = encode_example(tok, "masked_lm", "in [Y] .", "Paris")
    with pytest.raises(ValueError, match="same keys"):
        pad_batch(tok, [good, {k: v for k, v in good.items() if k != "token_type_ids"}])
    with pytest.raises(ValueError, match="at least one"):
        pad_batch(tok, [])
    bpe = build_byte_bpe_tokenizer()
    bpe.pad_token = None
    with pytest.raises(ValueError, match="pad token"):
        pad_batch(bpe, [encode_example(bpe, "causal_lm", "born in [Y]", "Paris")])


# --- predictions ---------------------------------------------------------------------------------------------------


def _one_hot_logits(token_ids: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(token_ids.clamp(min=0), vocab).float()


def test_masked_lm_predictions_and_correctness():
    tok = build_wordpiece_tokenizer()
    batch = pad_batch(
        tok, [encode_example(tok, "masked_lm", "Dante was born in [Y] .", t) for t in ("Florence", "Rome")]
    )
    logits = _one_hot_logits(batch["labels"], len(tok))
    rome = target_token_ids(tok, "Rome")
    first_mask = (batch["labels"][1] != IGNORE_INDEX).nonzero()[0, 0]
    logits[1, first_mask] = 0.0
    logits[1, first_mask, tok.unk_token_id] = 1.0  # one of two tokens wrong: the whole target is wrong
    assert predict_from_logits("masked_lm", logits, batch) == [
        target_token_ids(tok, "Florence"),
        [tok.unk_token_id, rome[1]],
    ]
    assert is_correct("masked_lm", logits, batch) == [True, False]


@pytest.mark.parametrize("side", ["right", "left"])
def test_causal_lm_predictions_are_read_one_position_early(side):
    tok = build_byte_bpe_tokenizer()
    tok.padding_side = side
    batch = pad_batch(
        tok, [encode_example(tok, "causal_lm", p, "Florence") for p in ("born in [Y]", "Dante was in [Y]")]
    )
    shifted = torch.full_like(batch["labels"], IGNORE_INDEX)
    shifted[:, :-1] = batch["labels"][:, 1:]
    logits = _one_hot_logits(shifted, len(tok))
    assert predict_from_logits("causal_lm", logits, batch) == [target_token_ids(tok, "Florence")] * 2
    assert is_correct("causal_lm", logits, batch) == [True, True]
    unshifted = _one_hot_logits(batch["labels"], len(tok))
    assert is_correct("causal_lm", unshifted, batch) == [False, False]


def test_seq_cls_predictions():
    batch = {"labels": torch.tensor([0, 2, 1])}
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 1.0, 2.0], [5.0, 0.0, 0.0]])
    assert predict_from_logits("seq_cls", logits, batch) == [0, 2, 0]
    assert is_correct("seq_cls", logits, batch) == [True, True, False]


def test_prediction_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="do not match"):
        predict_from_logits("masked_lm", torch.zeros(2, 5, 7), {"labels": torch.zeros(2, 4, dtype=torch.long)})


# --- with tiny models: the labels mean what Hugging Face models expect --------------------------------------------


def test_labels_match_huggingface_masked_and_causal_losses():
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    bert_sizes = {"hidden_size": 16, "intermediate_size": 32}
    gpt2_sizes = {"n_embd": 16, "n_positions": 64}
    cases = [
        (build_wordpiece_tokenizer(), "masked_lm", BertForMaskedLM, BertConfig, bert_sizes),
        (build_byte_bpe_tokenizer(), "causal_lm", GPT2LMHeadModel, GPT2Config, gpt2_sizes),
    ]
    for tok, task, model_cls, config_cls, sizes in cases:
        config = config_cls(vocab_size=len(tok), num_hidden_layers=1, num_attention_heads=2, **sizes)
        model = model_cls(config).eval()
        examples = [encode_example(tok, task, "Dante was born in [Y] .", t) for t in ("Florence", "Paris")]
        batch = pad_batch(tok, examples)
        output = model(**batch)
        logits, labels = output.logits, batch["labels"]
        if task == "causal_lm":
            logits, labels = logits[:, :-1], labels[:, 1:]
        manual = torch.nn.functional.cross_entropy(logits[labels != IGNORE_INDEX], labels[labels != IGNORE_INDEX])
        torch.testing.assert_close(output.loss, manual)
        assert [len(p) for p in predict_from_logits(task, output.logits, batch)] == [2, 1]


# --- the real mBERT vocabulary -------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(
    "prompt,target",
    [
        ("Dante was born in [Y] .", "Florence"),
        ("Dante è nato a [Y] .", "Firenze"),
        ("但丁出生于[Y]。", "佛罗伦萨"),
        ("Данте родился в [Y] .", "Флоренция"),
        ("[Y] est la capitale de la France .", "Paris"),
    ],
)
def test_mbert_masked_lm(mbert, prompt, target):
    features = encode_example(mbert, "masked_lm", prompt, target)
    masks = _mask_positions(mbert, features)
    ids = target_token_ids(mbert, target)
    assert len(masks) == len(ids) >= 1
    assert [features["labels"][i] for i in masks] == ids
    assert mbert.decode(ids).replace(" ", "") == target
    assert not any(token.startswith("##") for token in mbert.convert_ids_to_tokens(ids[:1]))


@pytest.mark.integration
def test_mbert_seq_cls_pair(mbert):
    features = encode_example(
        mbert, "seq_cls", "Un homme dort.", "neutral", pair="Ein Mann schläft.", label2id=LABEL2ID
    )
    assert features["labels"] == 1
    tokens = mbert.convert_ids_to_tokens(features["input_ids"])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2 and "homme" in tokens
    assert sum(features["token_type_ids"]) == len(tokens) - tokens.index("[SEP]") - 1
