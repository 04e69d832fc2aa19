"""What the rules share: the record views (`.._views`) and number/shape formatting."""

from __future__ import annotations

from .._format import num, shape_str
from .._views import (
    attribute_path,
    constant_baseline,
    exception_info,
    input_outliers,
    is_oom,
    leaf_activations,
    model_module,
    module_attrs,
    names,
    param_stats,
)

__all__ = [
    "attribute_path",
    "constant_baseline",
    "exception_info",
    "input_outliers",
    "is_oom",
    "leaf_activations",
    "model_module",
    "module_attrs",
    "names",
    "num",
    "param_stats",
    "shape_str",
]
