"""SGD linear-stability tools: Hessian/Gauss-Newton estimators by HVPs, exact NTK values, the alignment factor
of SGD noise, the bounds of Wu, Wang & Su (2022), and the `sharpness_monitor` hook (in `.monitor`)."""

from vfm.theory.stability.alignment import (
    Alignment,
    alignment_from_gradients,
    alignment_from_jacobian,
    gaussian_regression_alignment,
)
from vfm.theory.stability.eigen import EigenEstimate, lanczos, power_iteration, top_eigenvalue
from vfm.theory.stability.flat import FlatParameters
from vfm.theory.stability.hutchinson import HutchinsonEstimate, hessian_frobenius, hessian_trace, hutchinson
from vfm.theory.stability.ntk import ExactCurvature, exact_gauss_newton, jacobian, ntk_gram
from vfm.theory.stability.operators import (
    CurvatureOperator,
    gauss_newton_operator,
    hessian_operator,
    matrix_operator,
)
from vfm.theory.stability.problems import ObjectiveProbe, SquareLossProblem
from vfm.theory.stability.report import stability_report
from vfm.theory.stability.sharpness import measure_sharpness

__all__ = [
    "Alignment", "CurvatureOperator", "EigenEstimate", "ExactCurvature", "FlatParameters", "HutchinsonEstimate",
    "ObjectiveProbe", "SquareLossProblem", "alignment_from_gradients", "alignment_from_jacobian", "exact_gauss_newton",
    "gauss_newton_operator", "gaussian_regression_alignment", "hessian_frobenius", "hessian_operator", "hessian_trace",
    "hutchinson", "jacobian", "lanczos", "matrix_operator", "measure_sharpness", "ntk_gram", "power_iteration",
    "stability_report", "top_eigenvalue",
]
