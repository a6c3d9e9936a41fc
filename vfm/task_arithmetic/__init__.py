"""Task arithmetic: parameter selection, fine-tuning modes (standard, attention-only, linearized), task vectors.

Public API: `select_parameters` (rules per backbone family), `TaskVector` (algebra, apply, safetensors files),
the fine-tuning modes (`MODES`, the `task_arithmetic` objective, `LinearizedModel`), frozen heads, derived tasks,
and the evaluations (single task, addition, negation, disentanglement, kernel gap). See docs/task_arithmetic.md.
"""

from vfm.task_arithmetic.evaluate import (
    Editor,
    TaskData,
    default_alphas,
    disentanglement,
    kernel_gap,
    select_negation_alpha,
    single_task,
    task_addition,
    task_negation,
)
from vfm.task_arithmetic.heads import FrozenHead, build_head, fit_linear_probe, zeroshot_head
from vfm.task_arithmetic.linearize import LinearizationPoint, LinearizedModel, jvp_call, linearized_call
from vfm.task_arithmetic.objective import MODE_RULES, MODES, TaskArithmeticClassifier, encoder_weights
from vfm.task_arithmetic.selectors import RULES, count_parameters, detect_family, select_names, select_parameters
from vfm.task_arithmetic.task_vector import TaskVector
from vfm.task_arithmetic.tasks import TASK_NAMES, DerivedTaskDataset

__all__ = ["MODES", "MODE_RULES", "RULES", "TASK_NAMES", "DerivedTaskDataset", "Editor", "FrozenHead",
           "LinearizationPoint", "LinearizedModel", "TaskArithmeticClassifier", "TaskData", "TaskVector", "build_head",
           "count_parameters", "default_alphas", "detect_family", "disentanglement", "encoder_weights",
           "fit_linear_probe", "jvp_call", "kernel_gap", "linearized_call", "select_names", "select_negation_alpha",
           "select_parameters", "single_task", "task_addition", "task_negation", "zeroshot_head"]
