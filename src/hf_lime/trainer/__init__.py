"""Cross-lingual editor training: `LimeTrainingArguments` + `LimeTrainer`, and the episode loss."""

from .episode import EPISODE_METRICS, EpisodeOutput, run_episode
from .trainer import LimeTrainer
from .training_args import LimeTrainingArguments

__all__ = ["EPISODE_METRICS", "EpisodeOutput", "LimeTrainer", "LimeTrainingArguments", "run_episode"]
