"""Turn one (prompt, target) pair into model inputs, pad batches, and read predictions back.

Three task kinds are supported (`TASKS`):

- ``"masked_lm"`` (mBERT, XLM-R…): the target is tokenized on its own into ``k`` tokens, the
  ``"[Y]"`` placeholder of the prompt becomes ``k`` copies of the tokenizer's own mask token, and
  the labels hold the target ids at the mask positions (``-100`` elsewhere).
- ``"causal_lm"`` (GPT-2, Llama…): the prompt text before ``"[Y]"`` followed by the target as a
  continuation; the labels hold the target ids on the continuation (``-100`` on the prompt). Hugging
  Face causal LMs shift the labels themselves.
- ``"seq_cls"`` (XNLI…): ``tokenizer(prompt, pair)`` and one integer class label.

**How a target is tokenized.** The target is tokenized *as it appears after a space*, i.e. as a
word in running text: ``tokenizer(" " + target, add_special_tokens=False)``, dropping leading pieces
that are only whitespace. This gives ``"▁Paris"`` for SentencePiece (XLM-R, whose Metaspace
pre-tokenizer marks word starts), ``"ĠParis"`` for byte-level BPE (GPT-2, RoBERTa) and the word-initial
piece ``"Paris"`` (not ``"##…"``) for WordPiece. A target glued to the preceding character in the
template (e.g. Chinese ``"出生于[Y]"``) is still tokenized as a separate word, as in mLAMA's own
evaluation. The number of mask tokens found in the encoded prompt is always checked against ``k``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..tasks import check_task

PLACEHOLDER = "[Y]"
IGNORE_INDEX = -100
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
"""The tokenizer outputs a model is called with (what `encode_example` keeps and `pad_batch` pads)."""


def target_token_ids(tokenizer: Any, target: str) -> list[int]:
    """Token ids of `target` as a word after a space, without special tokens.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): the model's tokenizer.
        target (`str`): the target text, e.g. ``"Paris"``.

    Returns:
        `list[int]`: at least one id.
    """
    if not isinstance(target, str) or not target.strip():
        raise ValueError(f"The target must be a non-empty string, got {target!r}.")
    ids = list(tokenizer(" " + target.strip(), add_special_tokens=False)["input_ids"])
    while len(ids) > 1 and not tokenizer.decode([ids[0]]).strip():
        ids = ids[1:]
    if not ids:
        raise ValueError(f"The target {target!r} tokenizes to no tokens.")
    return ids


def _check_placeholder(prompt: str) -> None:
    count = prompt.count(PLACEHOLDER)
    if count != 1:
        raise ValueError(
            f"The prompt must contain the placeholder {PLACEHOLDER!r} exactly once, got {count}: {prompt!r}."
        )


def model_inputs(encoding: Mapping[str, Any]) -> dict[str, list[int]]:
    """The `MODEL_INPUTS` of a tokenizer encoding, as lists."""
    return {key: list(encoding[key]) for key in MODEL_INPUTS if key in encoding}


def _encode_masked_lm(tokenizer: Any, prompt: str, target: str, max_length: int) -> dict[str, list[int]]:
    if tokenizer.mask_token is None or tokenizer.mask_token_id is None:
        raise ValueError("task='masked_lm' needs a tokenizer with a mask token; this tokenizer has none.")
    _check_placeholder(prompt)
    target_ids = target_token_ids(tokenizer, target)
    k = len(target_ids)
    text = prompt.replace(PLACEHOLDER, tokenizer.mask_token * k)
    encoding = tokenizer(text)
    found = sum(1 for i in encoding["input_ids"] if i == tokenizer.mask_token_id)
    if found != k:
        raise ValueError(f"Expected {k} mask tokens for target {target!r} in {text!r}, found {found}.")
    if len(encoding["input_ids"]) > max_length:
        encoding = tokenizer(text, truncation=True, max_length=max_length)
        kept = sum(1 for i in encoding["input_ids"] if i == tokenizer.mask_token_id)
        if kept != k:
            raise ValueError(
                f"Truncating {prompt!r} to max_length={max_length} would cut a mask token; raise max_length."
            )
    features = model_inputs(encoding)
    targets = iter(target_ids)
    features["labels"] = [
        next(targets) if i == tokenizer.mask_token_id else IGNORE_INDEX for i in features["input_ids"]
    ]
    return features


def _causal_prompt_ids(tokenizer: Any, context: str) -> list[int]:
    # Keep a leading BOS the tokenizer adds (Llama) but no trailing EOS/SEP between prompt and continuation.
    encoding = tokenizer(context, return_special_tokens_mask=True)
    ids, special = list(encoding["input_ids"]), list(encoding["special_tokens_mask"])
    while ids and special[-1]:
        ids.pop()
        special.pop()
    return ids


def _encode_causal_lm(tokenizer: Any, prompt: str, target: str, max_length: int) -> dict[str, list[int]]:
    context = prompt.split(PLACEHOLDER, 1)[0].strip()
    prompt_ids = _causal_prompt_ids(tokenizer, context) if context else []
    if not prompt_ids:
        if tokenizer.bos_token_id is None:
            raise ValueError(f"task='causal_lm' needs text before {PLACEHOLDER!r} (or a BOS token), got {prompt!r}.")
        prompt_ids = [tokenizer.bos_token_id]
    target_ids = target_token_ids(tokenizer, target)
    if len(target_ids) >= max_length:
        raise ValueError(f"The target {target!r} has {len(target_ids)} tokens; max_length={max_length} is too small.")
    overflow = len(prompt_ids) + len(target_ids) - max_length
    if overflow > 0:
        # Keep the end of the prompt (it conditions the continuation) and a leading BOS if there is one.
        keep_bos = tokenizer.bos_token_id is not None and prompt_ids[:1] == [tokenizer.bos_token_id]
        prompt_ids = prompt_ids[:1] + prompt_ids[1 + overflow :] if keep_bos else prompt_ids[overflow:]
    input_ids = prompt_ids + target_ids
    return {
        "input_ids": input_ids,
        "attention_mask": [1] * len(input_ids),
        "labels": [IGNORE_INDEX] * len(prompt_ids) + target_ids,
    }


def label_to_id(target: str | int, label2id: Mapping[str, int] | None = None) -> int:
    """Map a class label (name, int, or digit string) to its integer id.

    Args:
        target (`str` or `int`): a label name such as ``"entailment"``, an int, or a digit string such as ``"2"``.
        label2id (`Mapping[str, int]`, *optional*, defaults to `None`): label name -> class id.

    Returns:
        `int`: the class id.
    """
    label2id = dict(label2id or {})
    if isinstance(target, str) and target in label2id:
        label = int(label2id[target])
    elif isinstance(target, int) and not isinstance(target, bool):
        label = target
    elif isinstance(target, str) and target.strip().isdigit():
        label = int(target.strip())
    else:
        raise ValueError(
            f"Unknown class label {target!r}; allowed names are {sorted(label2id)} or an integer class id."
        )
    if label < 0 or (label2id and label >= len(label2id)):
        raise ValueError(f"Class id {label} is out of range for label2id={label2id}.")
    return label


def encode_example(
    tokenizer: Any,
    task: str,
    prompt: str,
    target: str | int,
    pair: str | None = None,
    label2id: Mapping[str, int] | None = None,
    max_length: int = 128,
) -> dict[str, list[int]]:
    """Encode one example for `task`.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): the model's tokenizer.
        task (`str`): one of `TASKS`.
        prompt (`str`): for ``masked_lm``/``causal_lm`` a template with the subject filled in and the literal
            ``"[Y]"`` where the object goes; for ``seq_cls`` the first sentence (XNLI premise).
        target (`str` or `int`): the object label (LM tasks) or the class (name, int or digit string).
        pair (`str`, *optional*, defaults to `None`): second sentence for ``seq_cls`` (XNLI hypothesis).
        label2id (`Mapping[str, int]`, *optional*, defaults to `None`): class name -> id for ``seq_cls``.
        max_length (`int`, *optional*, defaults to `128`): maximum number of tokens.

    Returns:
        `dict[str, list[int]]`: ``input_ids``, ``attention_mask`` (+ ``token_type_ids`` when the tokenizer
        produces them for ``masked_lm``/``seq_cls``) and ``labels`` (a list for the LM tasks, an int for ``seq_cls``).

    Example:

    ```python
    >>> from transformers import BertTokenizerFast
    >>> tok = BertTokenizerFast.from_pretrained("bert-base-multilingual-cased")  # doctest: +SKIP
    >>> features = encode_example(tok, "masked_lm", "Dante was born in [Y] .", "Florence")  # doctest: +SKIP
    >>> tok.convert_ids_to_tokens(features["input_ids"])  # doctest: +SKIP
    ['[CLS]', 'Dante', 'was', 'born', 'in', '[MASK]', '.', '[SEP]']

    ```
    """
    check_task(task)
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}.")
    if task == "seq_cls":
        encoding = tokenizer(prompt, pair or None, truncation=True, max_length=max_length)
        features = model_inputs(encoding)
        features["labels"] = label_to_id(target, label2id)
        return features
    if not isinstance(target, str):
        raise TypeError(f"task={task!r} needs a string target, got {type(target).__name__}.")
    if task == "masked_lm":
        return _encode_masked_lm(tokenizer, prompt, target, max_length)
    return _encode_causal_lm(tokenizer, prompt, target, max_length)


def pad_batch(
    tokenizer: Any, examples: Sequence[Mapping[str, Any]], pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Pad encoded examples (from `encode_example`) into a batch of tensors, with transformers' collators.

    ``input_ids``, ``attention_mask`` and ``token_type_ids`` are padded by `tokenizer.pad` (the tokenizer's pad id
    and ``padding_side``); per-token ``labels`` with -100 on the same side (`DataCollatorForTokenClassification`).
    Integer labels (``seq_cls``) become a 1-D tensor (`DataCollatorWithPadding`).

    Args:
        tokenizer (`PreTrainedTokenizerBase`): provides ``pad_token_id`` and ``padding_side``.
        examples (`Sequence[Mapping[str, Any]]`): encoded examples with the same keys.
        pad_to_multiple_of (`int`, *optional*): Pad to a multiple of this many tokens (the collators' option).

    Returns:
        `dict[str, torch.Tensor]`: the padded batch.
    """
    from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

    if not examples:
        raise ValueError("pad_batch needs at least one example.")
    keys = set(examples[0])
    if any(set(example) != keys for example in examples):
        raise ValueError(f"All examples must have the same keys; got {sorted({tuple(sorted(e)) for e in examples})}.")
    allowed = {*MODEL_INPUTS, "labels"}
    if keys - allowed:
        raise ValueError(f"Unexpected key {sorted(keys - allowed)[0]!r}; allowed keys are {sorted(allowed)}.")
    if tokenizer.pad_token_id is None:
        raise ValueError("The tokenizer has no pad token; set tokenizer.pad_token (e.g. to the EOS token).")
    if tokenizer.padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {tokenizer.padding_side!r}.")
    features = [{key: list(value) if key != "labels" else value for key, value in e.items()} for e in examples]
    if "labels" in keys and not all(isinstance(e["labels"], int) for e in examples):
        collator = DataCollatorForTokenClassification(
            tokenizer, label_pad_token_id=IGNORE_INDEX, pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt"
        )
    else:
        collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt")
    batch = dict(collator(features))
    return {key: value.long() for key, value in batch.items()}


def concat_batches(batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack padded batches row-wise, padding the shorter ones on the right (attention 0, labels -100, id 0).

    Right padding past a row's real tokens changes none of their outputs (masked attention; causal models look
    left only), so the rows give what they gave in their own batches.
    """
    width = max(batch["input_ids"].shape[1] for batch in batches)
    padded = [pad_right(batch, width) for batch in batches]
    return {key: torch.cat([batch[key] for batch in padded]) for key in batches[0] if key != "lang_ids"}


def pad_right(batch: Mapping[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """`batch` with its `(rows, seq)` tensors padded on the right to `width` columns (attention 0, labels -100,
    id 0); other entries (e.g. `lang_ids`) unchanged. See `concat_batches` for why right padding changes nothing."""
    out = {}
    for key, value in batch.items():
        if key != "lang_ids" and value.dim() == 2 and value.shape[1] < width:
            value = F.pad(value, (0, width - value.shape[1]), value=IGNORE_INDEX if key == "labels" else 0)
        out[key] = value
    return out


def predict_from_logits(task: str, logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> list:
    """Argmax predictions at the positions that `batch["labels"]` marks.

    Args:
        task (`str`): one of `TASKS`.
        logits (`torch.Tensor`): ``(batch, seq, vocab)`` for LM tasks, ``(batch, num_labels)`` for ``seq_cls``.
        batch (`Mapping[str, torch.Tensor]`): the padded batch, with ``labels``.

    Returns:
        `list[list[int]]` for ``masked_lm``/``causal_lm`` (predicted ids of each row's target tokens, in order; for
        ``causal_lm`` the prediction of token ``t`` is read at position ``t - 1``), `list[int]` for ``seq_cls``.
    """
    check_task(task)
    logits = torch.as_tensor(logits)
    if task == "seq_cls":
        return logits.argmax(dim=-1).tolist()
    labels = torch.as_tensor(batch["labels"])
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}.")
    if task == "causal_lm":
        if bool((labels[:, 0] != IGNORE_INDEX).any()):
            raise ValueError("causal_lm labels at position 0 have no preceding position to predict them from.")
        logits, labels = logits[:, :-1], labels[:, 1:]
    predicted = logits.argmax(dim=-1)
    return [row[mask].tolist() for row, mask in zip(predicted, labels != IGNORE_INDEX, strict=True)]


def gold_from_batch(task: str, batch: Mapping[str, torch.Tensor]) -> list:
    """The gold target ids (LM tasks, one list per row) or classes (``seq_cls``) of a padded batch."""
    check_task(task)
    labels = torch.as_tensor(batch["labels"])
    if task == "seq_cls":
        return labels.tolist()
    return [row[row != IGNORE_INDEX].tolist() for row in labels]


def is_correct(task: str, logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> list[bool]:
    """Whether each row's prediction equals its labels (every target token right for LM tasks).

    Args:
        task (`str`): one of `TASKS`.
        logits (`torch.Tensor`): model logits for `batch`.
        batch (`Mapping[str, torch.Tensor]`): the padded batch, with ``labels``.

    Returns:
        `list[bool]`: one flag per row.
    """
    predictions = predict_from_logits(task, logits, batch)
    gold = gold_from_batch(task, batch)
    return [prediction == target for prediction, target in zip(predictions, gold, strict=True)]
