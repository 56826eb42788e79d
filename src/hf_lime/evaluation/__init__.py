"""Cross-lingual edit evaluation: edit in one language, score in every language (see `docs/evaluation.md`)."""

from .harness import RECORD_FIELDS, evaluate_editor
from .protocols import evaluate_editing_protocol
from .report import SUMMARY_NAMES, EvaluationResult, format_table, json_safe, save_report
from .scoring import candidate_table

__all__ = [
    "RECORD_FIELDS",
    "SUMMARY_NAMES",
    "EvaluationResult",
    "candidate_table",
    "evaluate_editing_protocol",
    "evaluate_editor",
    "format_table",
    "json_safe",
    "save_report",
]
