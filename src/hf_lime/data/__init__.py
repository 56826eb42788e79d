"""Parallel data sources (mLAMA, XNLI, CLDR facts) in one common schema, with group-disjoint splits."""

from ..tasks import TASKS
from .cldr import CLDR_RELATIONS, DEFAULT_CLDR_LANGUAGES, build_cldr_items, cldr_languages, load_cldr_facts
from .encoding import encode_example, is_correct, pad_batch, predict_from_logits
from .episodes import EpisodeCollator, EpisodeDataset, episode_languages
from .mlama import load_mlama, load_mlama_candidates, load_mlama_items, mlama_languages
from .names import LABEL_PROTOCOLS, check_label_language
from .schema import COLUMNS, FEATURES, ParallelItem, default_data_dir, items_to_dataset, validate_items
from .splits import SPLIT_NAMES, split_by_group
from .xnli import XNLI_LABELS, load_xnli, load_xnli_from_hub, xnli_hub_to_items, xnli_languages

__all__ = [
    "TASKS",
    "EpisodeCollator",
    "EpisodeDataset",
    "encode_example",
    "episode_languages",
    "is_correct",
    "pad_batch",
    "predict_from_logits",
    "CLDR_RELATIONS",
    "LABEL_PROTOCOLS",
    "COLUMNS",
    "DEFAULT_CLDR_LANGUAGES",
    "FEATURES",
    "SPLIT_NAMES",
    "XNLI_LABELS",
    "ParallelItem",
    "build_cldr_items",
    "check_label_language",
    "cldr_languages",
    "default_data_dir",
    "items_to_dataset",
    "load_cldr_facts",
    "load_mlama",
    "load_mlama_candidates",
    "load_mlama_items",
    "load_xnli",
    "load_xnli_from_hub",
    "mlama_languages",
    "split_by_group",
    "validate_items",
    "xnli_hub_to_items",
    "xnli_languages",
]
