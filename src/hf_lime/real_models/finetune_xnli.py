"""Fine-tune an encoder folder (e.g. the converted multilingual-e5-small) into a 3-way XNLI classifier.

Recipe (DESIGN.md §4, measured on 2 CPU cores): every language's training rows pooled; word embeddings and the
lowest 4 layers frozen; batch 16; AdamW lr 5e-5 with 10% warm-up and linear decay; length-grouped batches; eager
attention. Accuracy is reported per language on held-back premises.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

from ..data.xnli import XNLI_LABELS
from ._training import (
    check_positive,
    configure_threads,
    endless_batches,
    freeze_bottom,
    linear_schedule,
    per_language_mean,
    quiet_transformers,
    write_eval_results,
)

logger = logging.getLogger(__name__)
DEFAULT_SPLIT_SIZES = (0.8, 0.1, 0.1)  # train / validation / test shares of the premises


def flatten_xnli(items: Iterable[Mapping], languages: Sequence[str]) -> list[dict]:
    """One ``{premise, hypothesis, label, language}`` row per (item, language) for the chosen languages.

    Args:
        items (`Iterable[Mapping]`): rows of the item schema (``languages``, ``prompts``, ``pairs``, ``targets``).
        languages (`Sequence[str]`): languages to keep.
    """
    label2id = {name: i for i, name in enumerate(XNLI_LABELS)}
    rows = []
    for item in items:
        for language, premise, hypothesis, target in zip(
            item["languages"], item["prompts"], item["pairs"], item["targets"], strict=True
        ):
            if language not in languages:
                continue
            if target not in label2id:
                raise ValueError(f"Unknown XNLI label {target!r} in item {item.get('id')!r}; allowed: {XNLI_LABELS}.")
            rows.append(
                {"premise": premise, "hypothesis": hypothesis, "label": label2id[target], "language": language}
            )
    return rows


def _encode(tokenizer, rows: Sequence[dict], max_length: int) -> list[dict]:
    encoding = tokenizer(
        [row["premise"] for row in rows], [row["hypothesis"] for row in rows], truncation=True, max_length=max_length
    )
    return [
        {"input_ids": ids, "attention_mask": mask, "labels": row["label"]}
        for ids, mask, row in zip(encoding["input_ids"], encoding["attention_mask"], rows, strict=True)
    ]


def _collate(tokenizer, features: Sequence[dict], device) -> dict[str, torch.Tensor]:
    from hf_lime.data.encoding import pad_batch

    return {key: value.to(device) for key, value in pad_batch(tokenizer, features).items()}


@torch.no_grad()
def evaluate_xnli(model, tokenizer, rows: Sequence[dict], batch_size: int = 64, max_length: int = 128, progress=True):
    """Accuracy per language of a sequence classifier on flattened XNLI rows.

    Args:
        model (`BertForSequenceClassification`): the classifier (label ids in `XNLI_LABELS` order).
        tokenizer (`PreTrainedTokenizerBase`): its tokenizer.
        rows (`Sequence[dict]`): output of `flatten_xnli`.
        batch_size (`int`, *optional*, defaults to 64): evaluation batch size.
        max_length (`int`, *optional*, defaults to 128): truncation length.
        progress (`bool`, *optional*, defaults to `True`): show a tqdm bar.

    Returns:
        `dict[str, float]`: language -> accuracy.
    """
    from tqdm.auto import tqdm

    model.eval()
    features = _encode(tokenizer, rows, max_length)
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    correct: dict[str, list[int]] = {}
    for start in tqdm(range(0, len(order), batch_size), desc="evaluating XNLI", disable=not progress):
        chunk = order[start : start + batch_size]
        batch = _collate(tokenizer, [features[i] for i in chunk], next(model.parameters()).device)
        labels = batch.pop("labels")
        predictions = model(**batch).logits.argmax(dim=-1)
        for index, hit in zip(chunk, (predictions == labels).tolist(), strict=True):
            correct.setdefault(rows[index]["language"], []).append(int(hit))
    return {language: sum(hits) / len(hits) for language, hits in sorted(correct.items())}


def _load_classifier(base_dir: str | Path):
    from transformers import AutoTokenizer, BertForSequenceClassification

    with quiet_transformers():
        model = BertForSequenceClassification.from_pretrained(
            base_dir,
            num_labels=len(XNLI_LABELS),
            id2label=dict(enumerate(XNLI_LABELS)),
            label2id={name: i for i, name in enumerate(XNLI_LABELS)},
            attn_implementation="eager",
        )
    return model, AutoTokenizer.from_pretrained(base_dir)


def train_classifier(
    model,
    tokenizer,
    features: Sequence[dict],
    steps: int,
    batch_size: int,
    learning_rate: float,
    warmup_ratio: float,
    seed: int,
    progress: bool = True,
) -> list[float]:
    """Train the trainable parameters of ``model`` for ``steps`` length-grouped batches; return the losses."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.01)
    scheduler = linear_schedule(optimizer, steps, warmup_ratio)
    batches = endless_batches([len(f["input_ids"]) for f in features], batch_size, seed)
    losses: list[float] = []
    model.train()
    bar = tqdm(range(steps), desc="fine-tuning XNLI", disable=not progress)
    for step in bar:
        batch = _collate(tokenizer, [features[i] for i in next(batches)], device)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == steps:
            recent = sum(losses[-50:]) / len(losses[-50:])
            bar.set_postfix(loss=f"{recent:.3f}")
            logger.info("XNLI step %d/%d loss %.4f", step + 1, steps, recent)
    return losses


def finetune_xnli(
    base_dir: str | Path,
    output_dir: str | Path,
    data_dir: str | Path | None = None,
    languages: Sequence[str] | None = None,
    steps: int = 1000,
    batch_size: int = 16,
    learning_rate: float = 5e-5,
    warmup_ratio: float = 0.1,
    frozen_layers: int = 4,
    max_length: int = 128,
    seed: int = 0,
    eval_split: str = "test",
    split_sizes: Sequence[float] = DEFAULT_SPLIT_SIZES,
    device: str | None = None,
    num_threads: int | None = None,
    progress: bool = True,
) -> dict:
    """Fine-tune ``base_dir`` on pooled XNLI training rows and save a ``BertForSequenceClassification`` folder.

    Args:
        base_dir (`str` or `Path`): a BERT encoder folder (e.g. from `build_me5_small`) with its tokenizer.
        output_dir (`str` or `Path`): where the classifier, tokenizer and ``eval_results.json`` are written.
        data_dir (`str` or `Path`, *optional*): folder holding ``xnli/dev-<lang>.tsv``; defaults to the shared data.
        languages (`Sequence[str]`, *optional*): languages to train and evaluate on; defaults to all 15.
        steps (`int`, *optional*, defaults to 1000): optimisation steps.
        batch_size (`int`, *optional*, defaults to 16): examples per step.
        learning_rate (`float`, *optional*, defaults to 5e-5): peak AdamW learning rate.
        warmup_ratio (`float`, *optional*, defaults to 0.1): share of steps spent warming up.
        frozen_layers (`int`, *optional*, defaults to 4): lowest encoder layers kept frozen (embeddings always are).
        max_length (`int`, *optional*, defaults to 128): truncation length of premise + hypothesis.
        seed (`int`, *optional*, defaults to 0): seed of the premise split, batch order and initialisation.
        eval_split (`str`, *optional*, defaults to `"test"`): held-back split to report (``"validation"``/``"test"``).
        split_sizes (`Sequence[float]`, *optional*, defaults to `(0.8, 0.1, 0.1)`): train / validation / test shares
            of the premises (`load_xnli`); the classifier learns the train share only, so an editor evaluated on
            the test share of the same split edits items the classifier never saw.
        device (`str`, *optional*): ``"cpu"``/``"cuda"``; defaults to CUDA when available.
        num_threads (`int`, *optional*): torch CPU threads; defaults to torch's current setting.
        progress (`bool`, *optional*, defaults to `True`): show progress bars.

    Returns:
        `dict`: the content of ``eval_results.json`` (accuracy per language, mean, recipe, wall times).
    """
    from hf_lime.data.xnli import load_xnli, xnli_languages

    languages = list(languages) if languages is not None else xnli_languages(data_dir)
    check_positive(steps=steps, batch_size=batch_size, learning_rate=learning_rate, max_length=max_length)
    if eval_split not in ("validation", "test"):
        raise ValueError(f"eval_split must be 'validation' or 'test', got {eval_split!r}.")
    threads = configure_threads(num_threads)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    splits = load_xnli(data_dir, languages, seed=seed, split_sizes=split_sizes)
    train_rows, eval_rows = flatten_xnli(splits["train"], languages), flatten_xnli(splits[eval_split], languages)
    torch.manual_seed(seed)
    model, tokenizer = _load_classifier(base_dir)
    model.to(device)
    freeze_bottom(model.bert, frozen_layers)
    features = _encode(tokenizer, train_rows, max_length)
    logger.info(
        "XNLI: %d training rows, %d %s rows, %d languages", len(train_rows), len(eval_rows), eval_split, len(languages)
    )
    losses = train_classifier(
        model, tokenizer, features, steps, batch_size, learning_rate, warmup_ratio, seed, progress
    )
    train_seconds = time.perf_counter() - start
    accuracy = evaluate_xnli(model, tokenizer, eval_rows, max_length=max_length, progress=progress)
    model.to("cpu")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    results = {
        "task": "xnli",
        "eval_split": eval_split,
        "accuracy": accuracy,
        "mean_accuracy": per_language_mean(accuracy),
        "num_train_rows": len(train_rows),
        "num_eval_rows": len(eval_rows),
        "final_train_loss": sum(losses[-50:]) / len(losses[-50:]),
        "recipe": {
            "steps": steps,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "warmup_ratio": warmup_ratio,
            "frozen_layers": frozen_layers,
            "max_length": max_length,
            "seed": seed,
            "split_sizes": list(split_sizes),
            "languages": languages,
            "device": str(device),
            "num_threads": threads,
        },
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    write_eval_results(output_dir, results)
    logger.info("XNLI mean accuracy %.3f over %d languages", results["mean_accuracy"], len(accuracy))
    return results
