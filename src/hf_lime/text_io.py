"""Text in, text out for `LimeEditor`: turn a user's prompt and target into an edit batch, and read answers back.

Masked LMs take a prompt with one placeholder (`"[MASK]"`, `"[Y]"` or the tokenizer's mask token); classifiers a
text or a `(premise, hypothesis)` tuple; causal LMs a prompt whose continuation is the answer.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .data.encoding import MODEL_INPUTS, PLACEHOLDER, _causal_prompt_ids, encode_example, pad_batch, target_token_ids
from .tasks import model_label2id


def check_unicode(*texts: Any) -> None:
    """Refuse strings that are not valid Unicode text (lone surrogates cannot be tokenized)."""
    for text in texts:
        for part in text if isinstance(text, tuple) else (text,):
            if isinstance(part, str):
                try:
                    part.encode("utf-8")
                except UnicodeEncodeError as err:
                    raise ValueError(
                        f"{part!r} is not valid Unicode text (a lone surrogate at position {err.start}); "
                        "pass properly encoded strings."
                    ) from err


def encode_text(base_model: nn.Module, tokenizer: Any, task: str, text: Any, target: Any, max_length: int) -> dict:
    """One edit example (features with `labels`) from a user's `text` and new `target`."""
    check_unicode(text, target)
    check_target(target, task)
    if task == "seq_cls":
        premise, hypothesis = as_pair(text)
        label2id = model_label2id(base_model, "seq_cls")
        return encode_example(tokenizer, "seq_cls", premise, target, hypothesis, label2id, max_length)
    if not isinstance(text, str):
        raise TypeError(f"task={task!r} takes a string prompt, got {type(text).__name__}.")
    if task == "masked_lm":
        prompt, n_masks = masked_prompt(text, tokenizer)
        k = len(target_token_ids(tokenizer, target))
        if n_masks > 1 and n_masks != k:
            raise ValueError(f"{text!r} has {n_masks} masks but the target {target!r} has {k} tokens.")
        return encode_example(tokenizer, "masked_lm", prompt, target, max_length=max_length)
    prompt = text if PLACEHOLDER in text else f"{text} {PLACEHOLDER}"
    return encode_example(tokenizer, "causal_lm", prompt, target, max_length=max_length)


def predict_text(
    model: nn.Module,
    tokenizer: Any,
    task: str,
    text: Any,
    num_tokens: int | None = None,
    max_new_tokens: int = 8,
    max_length: int = 128,
) -> str:
    """The model's answer to one `text`: decoded mask tokens, a label name, or a greedy continuation."""
    check_unicode(text)
    if task == "masked_lm":
        return _predict_masked(model, tokenizer, text, num_tokens, max_length)
    if task == "seq_cls":
        return _predict_class(model, tokenizer, text, max_length)
    return _predict_continuation(model, tokenizer, text, max_new_tokens, max_length)


@torch.no_grad()
def score_text(model: nn.Module, tokenizer: Any, task: str, text: Any, target: Any, max_length: int) -> float:
    """The mean log-probability of `target` for `text` (its tokens at the placeholder, its continuation, or its
    class), under `model` as it is (applied edits included): minus the loss an edit of `text` to `target` starts
    from."""
    from .head import target_logits

    features = encode_text(_base(model), tokenizer, task, text, target, max_length)
    device = next(model.parameters()).device
    batch = {key: value.to(device) for key, value in pad_batch(tokenizer, [features]).items()}
    at_targets = target_logits(model, batch, task)
    logprobs = at_targets.logits.float().log_softmax(-1)
    return float(logprobs.gather(-1, at_targets.targets.unsqueeze(-1)).mean())


def rank_text(model: nn.Module, tokenizer: Any, text: Any, candidates: Any, max_length: int) -> str:
    """The best of `candidates` for a masked-LM prompt with one placeholder (mLAMA's typed querying)."""
    from .evaluation.candidates import CandidateRanker, RankingQuery

    if not isinstance(text, str):
        raise TypeError(f"Ranking candidates takes a string prompt, got {type(text).__name__}.")
    if isinstance(candidates, str) or not candidates or not all(isinstance(c, str) and c.strip() for c in candidates):
        raise ValueError(f"`candidates` must be a non-empty list of non-empty strings, got {candidates!r}.")
    prompt, _ = masked_prompt(text, tokenizer)
    ranker = CandidateRanker(model, tokenizer, {("", ""): list(candidates)}, max_length=max_length)
    return ranker.rank([RankingQuery(prompt, "", "")])[0]


def _logits(model: nn.Module, encoding: Mapping[str, Any]) -> torch.Tensor:
    device = next(model.parameters()).device
    inputs = {k: torch.as_tensor(v).to(device) for k, v in encoding.items() if k in MODEL_INPUTS}
    return model(**inputs).logits


def _predict_masked(model: nn.Module, tokenizer: Any, text: Any, num_tokens: int | None, max_length: int) -> str:
    if not isinstance(text, str):
        raise TypeError(f"task='masked_lm' takes string prompts, got {type(text).__name__}.")
    prompt, n_masks = masked_prompt(text, tokenizer)
    if num_tokens is not None:
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 1:
            raise ValueError(f"`num_tokens` must be a positive int, got {num_tokens!r}.")
        if n_masks > 1 and num_tokens != n_masks:
            raise ValueError(f"{text!r} has {n_masks} masks but num_tokens={num_tokens}.")
        n_masks = num_tokens
    encoding = tokenizer(
        prompt.replace(PLACEHOLDER, tokenizer.mask_token * n_masks),
        return_tensors="pt",
        truncation=True,
        max_length=max_length,
    )
    positions = encoding["input_ids"][0] == tokenizer.mask_token_id
    if int(positions.sum()) != n_masks:
        raise ValueError(f"Expected {n_masks} mask tokens in the encoded {text!r}; raise max_length?")
    logits = _logits(model, encoding)[0]
    ids = logits[positions.to(logits.device)].argmax(-1).tolist()
    return tokenizer.decode(ids).strip()


def _predict_class(model: nn.Module, tokenizer: Any, text: Any, max_length: int) -> str:
    premise, hypothesis = as_pair(text)
    encoding = tokenizer(premise, hypothesis, return_tensors="pt", truncation=True, max_length=max_length)
    class_id = int(_logits(model, encoding)[0].argmax())
    id2label = getattr(_base(model).config, "id2label", None) or {}
    return str(id2label.get(class_id, class_id))


def _predict_continuation(model: nn.Module, tokenizer: Any, text: Any, max_new_tokens: int, max_length: int) -> str:
    """The greedy continuation from `model.generate` (KV cache; applied edits act at every step)."""
    if not isinstance(text, str):
        raise TypeError(f"task='causal_lm' takes string prompts, got {type(text).__name__}.")
    context = text.split(PLACEHOLDER, 1)[0].strip()
    ids = _causal_prompt_ids(tokenizer, context)[-max_length:] if context else [tokenizer.bos_token_id]
    if ids == [None]:
        raise ValueError("An empty prompt needs a tokenizer with a BOS token.")
    limit = getattr(_base(model).config, "max_position_embeddings", None) or 1 << 30
    budget = min(max_new_tokens, max(limit - len(ids), 0))
    if budget == 0:
        return ""
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=budget,
                            do_sample=False, num_beams=1, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=pad)  # fmt: skip
    new = output[0, len(ids) :].tolist()
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id)]
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def _base(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def masked_prompt(text: str, tokenizer: Any) -> tuple[str, int]:
    """
    `text` with its answer placeholder replaced by `"[Y]"`, and how many masks it had. The placeholder is one run
    of `"[Y]"`, `"[MASK]"` or the tokenizer's mask token (whitespace between them allowed).
    """
    if tokenizer.mask_token is None:
        raise ValueError("task='masked_lm' needs a tokenizer with a mask token.")
    one = "|".join(re.escape(m) for m in dict.fromkeys((PLACEHOLDER, "[MASK]", tokenizer.mask_token)))
    runs = list(re.finditer(rf"(?:{one})(?:\s*(?:{one}))*", text))
    if len(runs) != 1:
        raise ValueError(
            f"The text needs exactly one placeholder ({tokenizer.mask_token!r}, '[MASK]' or '[Y]', possibly repeated "
            f"once per target token) where the answer goes; found {len(runs)} in {text!r}."
        )
    run = runs[0]
    n_masks = len(re.findall(one, run.group()))
    return text[: run.start()] + PLACEHOLDER + text[run.end() :], n_masks


def as_rows(text: Any, target: Any) -> tuple[list, list]:
    """`(texts, targets)` as two equally long lists from one text/target or two lists."""
    if isinstance(text, list):
        if not isinstance(target, list) or len(target) != len(text) or not text:
            raise ValueError("For a list of texts pass a non-empty list of targets of the same length.")
        return text, target
    if isinstance(target, list):
        raise TypeError("A list of targets needs a list of texts (one target per text).")
    return [text], [target]


def answer_rows(text: Any, target: Any, language: Any) -> tuple[list, list, Any]:
    """`(texts, targets, languages)` for `LimeEditor.edit`, with an answer (or a prompt) given per language.

    - `target` a `{language: answer}` dict, `text` one prompt: one row per answer, every row the prompt in its
      editing language `language` (a string or `None`);
    - `text` a `{language: prompt}` dict: one row per language, each its prompt with that language as the row's
      editing language, and either the same `target` for every row or `target` a dict with the same languages;
    - anything else: [`as_rows`] (one text and target, or two lists), `language` unchanged.
    """
    if not isinstance(text, Mapping) and not isinstance(target, Mapping):
        return *as_rows(text, target), language
    _check_language_dict(text)
    _check_language_dict(target)
    if isinstance(text, Mapping):
        return _rows_per_prompt(text, target, language)
    if isinstance(text, list) or not (language is None or isinstance(language, str)):
        raise TypeError(
            "A {language: answer} dict edits one prompt: pass one text and its editing language (a string), "
            f"got text={text!r}, language={language!r}."
        )
    answers = list(target.values())
    if len({repr(answer) for answer in answers}) > 1:
        warnings.warn(
            f"One prompt with {len(set(map(repr, answers)))} different answers ({sorted(target)}): a prompt gives one "
            "answer, so they compete and the prompt may hold none of them. For each language to answer in its own "
            "words, give each language's prompt too: edit({language: prompt}, {language: answer}).",
            UserWarning,
            stacklevel=3,
        )
    return [text] * len(target), answers, language


def _check_language_dict(given: Any) -> None:
    if isinstance(given, Mapping) and (not given or not all(isinstance(key, str) and key for key in given)):
        raise ValueError(f"A per-language prompt or answer is a non-empty dict keyed by language code, got {given!r}.")


def _rows_per_prompt(text: Mapping, target: Any, language: Any) -> tuple[list, list, list]:
    if language is not None:
        raise ValueError("With a {language: prompt} dict its keys are the editing languages: leave `language` out.")
    if isinstance(target, Mapping) and set(target) != set(text):
        raise ValueError(
            f"The answers' languages {sorted(target)} differ from the prompts' {sorted(text)}: give one answer "
            "per prompt's language, or one answer for all."
        )
    keys = list(text)
    targets = [target[key] for key in keys] if isinstance(target, Mapping) else [target] * len(keys)
    return [text[key] for key in keys], targets, keys


def as_pair(text: Any) -> tuple[str, str | None]:
    """A classifier input as `(premise, hypothesis or None)`."""
    if isinstance(text, str):
        return text, None
    if isinstance(text, tuple) and len(text) == 2 and all(isinstance(t, str) for t in text):
        return text[0], text[1]
    raise TypeError(f"A classifier input is a string or a (premise, hypothesis) tuple of strings, got {text!r}.")


def check_target(target: Any, task: str) -> None:
    """A non-empty string (LMs) or a label name / class id (classifiers), else a clear error."""
    if isinstance(target, str):
        if not target.strip():
            raise ValueError(f"The target must be a non-empty string, got {target!r}.")
    elif task != "seq_cls" or isinstance(target, bool) or not isinstance(target, int):
        allowed = "a label name or class id" if task == "seq_cls" else "a non-empty string"
        raise TypeError(f"The target for task={task!r} must be {allowed}, got {target!r}.")
