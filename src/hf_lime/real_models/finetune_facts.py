"""Give an encoder folder (e.g. the converted multilingual-e5-small, which has no MLM head) a fact-completion head.

The model is a standard ``BertForMaskedLM``: head = dense + GELU + LayerNorm (new, from scratch) + decoder tied to
the (frozen) word embeddings + a bias (zeros). The head, and optionally the top ``train_layers`` encoder layers,
are trained on cloze prompts of training-split facts (one mask per target token) with a *sampled* softmax: each
step scores the batch's target tokens against ~8k random vocabulary tokens instead of all 250k (DESIGN.md §4: ~18×
faster per step than the full softmax and more accurate in the same time). Evaluation is on held-out subjects.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

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
from .facts_eval import candidate_table, encode_facts, evaluate_facts, flatten_facts, majority_baseline

logger = logging.getLogger(__name__)

UNUSED_BIAS = -100.0


def sampled_softmax_loss(
    model, batch: Mapping[str, torch.Tensor], num_negatives: int, vocab_limit: int, generator: torch.Generator
) -> torch.Tensor:
    """Cross-entropy of the masked targets against themselves plus ``num_negatives`` uniform random tokens.

    Args:
        model (`BertForMaskedLM`): the masked LM (its ``cls.predictions`` head is used piecewise).
        batch (`Mapping[str, torch.Tensor]`): ``input_ids``, ``attention_mask`` and per-token ``labels`` (-100 off
            the masks); with ``hidden_states`` (the encoder's last hidden states, e.g. from [`FrozenPrefix`]) the
            encoder is not run.
        num_negatives (`int`): random vocabulary ids drawn per step (duplicates and hits are merged).
        vocab_limit (`int`): negatives are drawn from ``[0, vocab_limit)``.
        generator (`torch.Generator`): source of the negatives.

    Returns:
        `torch.Tensor`: the scalar loss.
    """
    labels = batch["labels"]
    positions = labels != -100
    hidden = batch.get("hidden_states")
    if hidden is None:
        hidden = model.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    head = model.cls.predictions
    states = head.transform(hidden[positions])
    targets = labels[positions]
    negatives = torch.randint(vocab_limit, (num_negatives,), generator=generator).to(targets.device)
    candidates = torch.unique(torch.cat([targets, negatives]))
    logits = states @ head.decoder.weight[candidates].T + head.bias[candidates]
    return torch.nn.functional.cross_entropy(logits, torch.searchsorted(candidates, targets))


class FrozenPrefix:
    """
    The hidden states after the frozen bottom layers of a ``BertForMaskedLM``, computed once per training prompt.

    While only the top layers train, the bottom ones give the same output for a prompt at every step: computing it
    once and running just the trained layers per step gives the same loss and gradients (tested) at a fraction of
    the cost. The frozen layers run in evaluation mode (no dropout): they are not being trained.

    Args:
        model (`BertForMaskedLM`): the model (the first `frozen_layers` encoder layers and the embeddings frozen).
        tokenizer (`PreTrainedTokenizerBase`): its tokenizer (pad id, padding side).
        features (`Sequence[dict]`): encoded prompts (``input_ids``, ``attention_mask``).
        frozen_layers (`int`): how many bottom encoder layers are frozen.
        batch_size (`int`, *optional*, defaults to 64): prompts per forward pass while caching.
    """

    def __init__(self, model, tokenizer, features: Sequence[dict], frozen_layers: int, batch_size: int = 64) -> None:
        from hf_lime.data.encoding import pad_batch

        self.model, self.frozen_layers, self.side = model, frozen_layers, tokenizer.padding_side
        device = next(model.parameters()).device
        self.states: list[torch.Tensor] = []
        with torch.no_grad():
            for start in range(0, len(features), batch_size):
                rows = [
                    {k: f[k] for k in ("input_ids", "attention_mask")} for f in features[start : start + batch_size]
                ]
                batch = {k: v.to(device) for k, v in pad_batch(tokenizer, rows).items()}
                hidden = model.bert.embeddings(input_ids=batch["input_ids"])
                hidden = self._layers(hidden, batch["attention_mask"], 0, frozen_layers)
                for row, mask in zip(hidden, batch["attention_mask"].bool(), strict=True):
                    self.states.append(row[mask].clone())

    def _layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, first: int, last: int) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        mask = create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden, attention_mask=attention_mask)
        for layer in self.model.bert.encoder.layer[first:last]:
            hidden = layer(hidden, mask)
        return hidden

    def last_hidden_state(self, indices: Sequence[int], attention_mask: torch.Tensor) -> torch.Tensor:
        """The encoder's output for the prompts `indices`, padded like `attention_mask`, through the trained layers."""
        states = [self.states[i] for i in indices]
        padded = attention_mask.new_zeros((*attention_mask.shape, states[0].shape[-1]), dtype=states[0].dtype)
        for row, (state, mask) in enumerate(zip(states, attention_mask.bool(), strict=True)):
            padded[row, mask] = state
        return self._layers(padded, attention_mask, self.frozen_layers, len(self.model.bert.encoder.layer))


def _optimizer(model, head_learning_rate: float, learning_rate: float) -> torch.optim.Optimizer:
    head = [p for n, p in model.cls.named_parameters() if p.requires_grad and "decoder" not in n]
    head_ids = {id(p) for p in head}
    body = [p for p in model.bert.parameters() if p.requires_grad and id(p) not in head_ids]
    groups = [{"params": head, "lr": head_learning_rate}]
    if body:
        groups.append({"params": body, "lr": learning_rate})
    return torch.optim.AdamW(groups, weight_decay=0.0)


def train_fact_head(
    model,
    tokenizer,
    features: Sequence[dict],
    steps: int,
    batch_size: int,
    head_learning_rate: float,
    learning_rate: float,
    num_negatives: int,
    warmup_ratio: float,
    seed: int,
    progress: bool = True,
) -> list[float]:
    """Train the head (and whatever encoder layers are trainable) with the sampled softmax; return the losses."""
    from tqdm.auto import tqdm

    from hf_lime.data.encoding import pad_batch

    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    frozen = _frozen_layers(model)
    prefix = FrozenPrefix(model, tokenizer, features, frozen) if frozen > 0 else None
    optimizer = _optimizer(model, head_learning_rate, learning_rate)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    scheduler = linear_schedule(optimizer, steps, warmup_ratio)
    batches = endless_batches([len(f["input_ids"]) for f in features], batch_size, seed)
    losses: list[float] = []
    model.train()
    bar = tqdm(range(steps), desc="training fact head", disable=not progress)
    for step in bar:
        indices = next(batches)
        examples = [{k: v for k, v in features[i].items() if k != "row"} for i in indices]
        batch = {k: v.to(device) for k, v in pad_batch(tokenizer, examples).items()}
        if prefix is not None:
            batch["hidden_states"] = prefix.last_hidden_state(indices, batch["attention_mask"])
        loss = sampled_softmax_loss(model, batch, num_negatives, len(tokenizer), generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == steps:
            recent = sum(losses[-50:]) / len(losses[-50:])
            bar.set_postfix(loss=f"{recent:.3f}")
            logger.info("facts step %d/%d sampled-softmax loss %.4f", step + 1, steps, recent)
    return losses


def _frozen_layers(model) -> int:
    """How many bottom encoder layers have no trainable parameter (with frozen embeddings), 0 otherwise."""
    if any(p.requires_grad for p in model.bert.embeddings.parameters()):
        return 0
    count = 0
    for layer in model.bert.encoder.layer:
        if any(p.requires_grad for p in layer.parameters()):
            break
        count += 1
    return count


def load_masked_lm(base_dir: str | Path, train_layers: int, device: str | torch.device = "cpu"):
    """``BertForMaskedLM`` from an encoder folder: new head (bias zeros, decoder tied), bottom layers frozen."""
    from transformers import AutoTokenizer, BertForMaskedLM

    with quiet_transformers():
        model = BertForMaskedLM.from_pretrained(base_dir, attn_implementation="eager")
    num_layers = model.config.num_hidden_layers
    if not 0 <= train_layers <= num_layers:
        raise ValueError(f"train_layers must be between 0 and {num_layers}, got {train_layers}.")
    if model.cls.predictions.decoder.weight is not model.bert.embeddings.word_embeddings.weight:
        raise ValueError(f"{base_dir}: the decoder is not tied to the word embeddings (tie_word_embeddings=False?).")
    freeze_bottom(model.bert, num_layers - train_layers)
    with torch.no_grad():
        model.cls.predictions.bias.zero_()
    return model.to(device), AutoTokenizer.from_pretrained(base_dir)


def _sample_rows(rows: list[dict], limit: int | None, seed: int) -> list[dict]:
    """At most ``limit`` rows per language (a seeded sample), order kept."""
    if limit is None:
        return rows
    by_language: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        by_language.setdefault(row["language"], []).append(index)
    rng = random.Random(seed)
    keep = {i for indices in by_language.values() for i in rng.sample(indices, min(limit, len(indices)))}
    return [row for index, row in enumerate(rows) if index in keep]


def _split(data, name: str) -> list:
    if name not in data:
        raise ValueError(f"The facts dataset has no {name!r} split; it has {sorted(data)}.")
    return list(data[name])


def finetune_facts(
    base_dir: str | Path,
    output_dir: str | Path,
    data: Mapping[str, Iterable[Mapping]],
    languages: Sequence[str] | None = None,
    steps: int = 300,
    batch_size: int = 32,
    train_layers: int = 2,
    head_learning_rate: float = 1e-3,
    learning_rate: float = 1e-4,
    num_negatives: int = 8192,
    warmup_ratio: float = 0.1,
    max_length: int = 64,
    max_eval_per_language: int | None = 300,
    eval_split: str = "test",
    seed: int = 0,
    device: str | None = None,
    num_threads: int | None = None,
    progress: bool = True,
) -> dict:
    """Train a fact-completion MLM head on ``data["train"]`` and report precision@1 on held-out subjects.

    Args:
        base_dir (`str` or `Path`): a BERT encoder folder (e.g. from `build_me5_small`) with its tokenizer.
        output_dir (`str` or `Path`): where the ``BertForMaskedLM``, tokenizer and ``eval_results.json`` go.
        data (`Mapping[str, Iterable[Mapping]]`): splits (``"train"`` and `eval_split`) of items in the common
            schema, e.g. ``load_mlama(...)`` or ``load_cldr_facts(...)``; prompts hold ``"[Y]"``.
        languages (`Sequence[str]`, *optional*): languages to use; defaults to all in the data.
        steps (`int`, *optional*, defaults to 300): optimisation steps.
        batch_size (`int`, *optional*, defaults to 32): prompts per step.
        train_layers (`int`, *optional*, defaults to 2): top encoder layers trained with the head (0 = head only).
        head_learning_rate (`float`, *optional*, defaults to 1e-3): AdamW learning rate of the new head.
        learning_rate (`float`, *optional*, defaults to 1e-4): AdamW learning rate of the trained layers.
        num_negatives (`int`, *optional*, defaults to 8192): random vocabulary tokens per step.
        warmup_ratio (`float`, *optional*, defaults to 0.1): share of steps spent warming up.
        max_length (`int`, *optional*, defaults to 64): truncation length.
        max_eval_per_language (`int`, *optional*, defaults to 300): cap on evaluated facts per language
            (`None` = all).
        eval_split (`str`, *optional*, defaults to `"test"`): the held-out split to report.
        seed (`int`, *optional*, defaults to 0): seed of batch order, negatives and the evaluation sample.
        device (`str`, *optional*): ``"cpu"``/``"cuda"``; defaults to CUDA when available.
        num_threads (`int`, *optional*): torch CPU threads; defaults to torch's current setting.
        progress (`bool`, *optional*, defaults to `True`): show progress bars.

    Returns:
        `dict`: the content of ``eval_results.json``.
    """
    check_positive(
        steps=steps,
        batch_size=batch_size,
        head_learning_rate=head_learning_rate,
        learning_rate=learning_rate,
        num_negatives=num_negatives,
        max_length=max_length,
    )
    threads = configure_threads(num_threads)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    torch.manual_seed(seed)
    train_items, eval_items = _split(data, "train"), _split(data, eval_split)
    train_rows = flatten_facts(train_items, languages)
    eval_rows = _sample_rows(flatten_facts(eval_items, languages), max_eval_per_language, seed)
    if not train_rows or not eval_rows:
        raise ValueError(f"No usable facts for languages={languages}: {len(train_rows)} train, {len(eval_rows)} eval.")
    model, tokenizer = load_masked_lm(base_dir, train_layers, device)
    features = encode_facts(tokenizer, train_rows, max_length)
    logger.info("facts: %d training prompts, %d %s prompts", len(features), len(eval_rows), eval_split)
    losses = train_fact_head(
        model,
        tokenizer,
        features,
        steps,
        batch_size,
        head_learning_rate,
        learning_rate,
        num_negatives,
        warmup_ratio,
        seed,
        progress,
    )
    train_seconds = time.perf_counter() - start
    with torch.no_grad():
        model.cls.predictions.bias[len(tokenizer) :] = UNUSED_BIAS  # ids past the tokenizer are never predicted
    candidates = candidate_table(train_rows + flatten_facts(eval_items, languages))
    scores = evaluate_facts(model, tokenizer, eval_rows, candidates, max_length=max_length, progress=progress)
    model.to("cpu")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    results = {
        "task": "fact_completion",
        "eval_split": eval_split,
        **scores,
        "mean_precision_at_1": per_language_mean(scores["precision_at_1"]),
        "mean_precision_at_1_candidates": per_language_mean(scores["precision_at_1_candidates"]),
        "majority_baseline": majority_baseline(train_rows, eval_rows),
        "num_train_prompts": len(features),
        "final_train_loss": sum(losses[-50:]) / len(losses[-50:]),
        "recipe": {
            "steps": steps,
            "batch_size": batch_size,
            "train_layers": train_layers,
            "head_learning_rate": head_learning_rate,
            "learning_rate": learning_rate,
            "num_negatives": num_negatives,
            "warmup_ratio": warmup_ratio,
            "max_length": max_length,
            "seed": seed,
            "languages": sorted({r["language"] for r in train_rows}),
            "device": str(device),
            "num_threads": threads,
        },
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    write_eval_results(output_dir, results)
    logger.info(
        "facts mean p@1 %.3f (candidates %.3f)",
        results["mean_precision_at_1"],
        results["mean_precision_at_1_candidates"],
    )
    return results
