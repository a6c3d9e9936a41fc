"""The linear-stability bounds beside measured curvature: sqrt(B / mu) / eta on ||H||_F, 2 / eta on lambda_max and Tr H."""

from __future__ import annotations

import math
from typing import Any


def stability_report(eta: float, batch_size: int, hessian_frobenius: float, mu: float,
                     top_eigenvalue: float | None = None, trace: float | None = None) -> dict[str, Any]:
    """Bounds and measured/bound ratios; a ratio above 1 says SGD cannot stay at this point [D constants].

    frobenius_bound = sqrt(B / mu) / eta (Wu, Wang, Su 2022, reconstructed constant); gd_bound = 2 / eta on
    lambda_max (GD's linear stability); trace_bound = 2 / eta on Tr H (Wu & Su 2023, under its own notion).
    """
    if eta <= 0 or batch_size < 1:
        raise ValueError(f"stability_report: eta={eta}, batch_size={batch_size}; expected eta > 0 and batch_size >= 1")
    # mu <= 0 means the noise gives no lower bound on the loss's growth, hence no constraint; nan stays unknown.
    bound = math.sqrt(batch_size / mu) / eta if mu > 0 else (float("nan") if math.isnan(mu) else float("inf"))
    report: dict[str, Any] = {
        "eta": eta,
        "batch_size": batch_size,
        "mu": mu,
        "hessian_frobenius": hessian_frobenius,
        "frobenius_bound": bound,
        "frobenius_ratio": hessian_frobenius / bound,
        "gd_bound": 2 / eta,
        "trace_bound": 2 / eta,
    }
    if top_eigenvalue is not None:
        report["top_eigenvalue"] = top_eigenvalue
        report["gd_ratio"] = top_eigenvalue * eta / 2
    if trace is not None:
        report["trace"] = trace
        report["trace_ratio"] = trace * eta / 2
    return report
