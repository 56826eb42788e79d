"""Cross-lingual edit metrics: numpy math, the `lime_xl_edit` evaluate module, its installer, and plots.

Importing this package is cheap: evaluate and matplotlib are imported only inside the functions that need them.
"""

from .compare import compare_xl_edit_metrics
from .install import install_evaluate_module, install_evaluate_module_on_import, metric_path
from .plots import plot_by_language, plot_es_loc, plot_matrix
from .xl_edit import CI_METRIC_NAMES, KINDS, METRIC_NAMES, SCALAR_METRIC_NAMES, compute_xl_edit_metrics

__all__ = [
    "CI_METRIC_NAMES",
    "KINDS",
    "METRIC_NAMES",
    "SCALAR_METRIC_NAMES",
    "compare_xl_edit_metrics",
    "compute_xl_edit_metrics",
    "install_evaluate_module",
    "install_evaluate_module_on_import",
    "metric_path",
    "plot_by_language",
    "plot_es_loc",
    "plot_matrix",
]
