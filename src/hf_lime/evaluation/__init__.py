"""Cross-lingual edit evaluation: edit in one language, score in every language (see `docs/evaluation.md`)."""

from .harness import RECORD_FIELDS, evaluate_editor
from .report import SUMMARY_NAMES, EvaluationResult, format_table, save_report

__all__ = ["RECORD_FIELDS", "SUMMARY_NAMES", "EvaluationResult", "evaluate_editor", "format_table", "save_report"]
