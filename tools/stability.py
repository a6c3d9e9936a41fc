#!/usr/bin/env python
"""SGD linear-stability tools: python tools/stability.py {report,least-squares,measure} ... (see --help)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from vfm.errors import ConfigError, VfmError

EXIT_USAGE = 2


def _report(args: argparse.Namespace) -> dict[str, Any]:
    from vfm.theory.stability.report import stability_report

    if args.eta <= 0 or args.batch_size < 1 or args.mu <= 0:
        raise ConfigError(f"report: --eta {args.eta}, --batch-size {args.batch_size}, --mu {args.mu}; expected all > 0")
    return stability_report(args.eta, args.batch_size, args.hessian_frobenius, args.mu, args.top_eigenvalue, args.trace)


def _least_squares(args: argparse.Namespace) -> dict[str, Any]:
    import math

    import torch

    from vfm.theory.stability.linear_sgd import critical_step_size, least_squares, min_alignment

    if not 1 <= args.samples < args.dim or args.samples > 40:
        raise ConfigError(f"least-squares: --samples {args.samples}, --dim {args.dim}; expected 1 <= samples < dim, samples <= 40")
    generator = torch.Generator().manual_seed(args.seed)
    scales = torch.logspace(0, -math.log10(args.anisotropy), args.dim, dtype=torch.float64)
    problem = least_squares(torch.randn(args.samples, args.dim, generator=generator, dtype=torch.float64) * scales)
    mu = min_alignment(problem)
    frobenius = problem.hessian.norm().item()
    rows = []
    for batch_size in args.batch_sizes:
        eta = critical_step_size(problem, batch_size)
        rows.append({"batch_size": batch_size, "eta_crit": eta, "bound": math.sqrt(batch_size / mu) / eta})
    return {"hessian_frobenius": frobenius, "mu_min": mu,
            "gd_critical_eta": 2 / torch.linalg.eigvalsh(problem.hessian)[-1].item(), "rows": rows}


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    from vfm.config import load_config
    from vfm.engine.checkpoint import load_weights
    from vfm.engine.run_config import RunConfig
    from vfm.registry import DATASETS, OBJECTIVES, import_custom_modules
    from vfm.theory.stability.monitor import probe_batch
    from vfm.theory.stability.problems import ObjectiveProbe
    from vfm.theory.stability.sharpness import measure_sharpness

    cfg = load_config(args.config, args.overrides, RunConfig)
    import_custom_modules(cfg.custom_imports)
    objective = OBJECTIVES.build(cfg.objective, "objective")
    if args.checkpoint:
        load_weights(objective, args.checkpoint)
    objective.eval()
    dataset = DATASETS.build(cfg.data.train, "data.train")
    loader = type("Probe", (), {"dataset": dataset, "collate_fn": staticmethod(_collate)})()
    batch = probe_batch(loader, args.probe_size, "cpu")
    eta = args.eta if args.eta is not None else float(cfg.optim.lr)
    return measure_sharpness(ObjectiveProbe(objective, batch), eta, args.batch_size or cfg.data.batch_size,
                             args.probes, args.lanczos_iters, args.alignment_samples, seed=args.seed)


def _collate(samples: list[Any]) -> Any:
    from torch.utils.data import default_collate

    return default_collate(samples)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stability.py", description="SGD linear-stability bounds and sharpness estimates.")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)

    report = commands.add_parser("report", help="bounds sqrt(B/mu)/eta and 2/eta beside measured values")
    report.add_argument("--eta", type=float, required=True, help="SGD learning rate")
    report.add_argument("--batch-size", type=int, required=True, help="batch size B")
    report.add_argument("--hessian-frobenius", type=float, required=True, help="measured ||H||_F")
    report.add_argument("--mu", type=float, required=True, help="alignment factor of the SGD noise")
    report.add_argument("--top-eigenvalue", type=float, help="measured lambda_max(H)")
    report.add_argument("--trace", type=float, help="measured Tr H")

    squares = commands.add_parser("least-squares", help="exact critical step sizes and the bound on random least squares")
    squares.add_argument("--samples", type=int, default=30, help="n (at most 40: the moment operator is n^2 x n^2)")
    squares.add_argument("--dim", type=int, default=60, help="d > n (over-parameterised)")
    squares.add_argument("--anisotropy", type=float, default=10.0, help="ratio of the largest to smallest column scale")
    squares.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8], help="batch sizes B")
    squares.add_argument("--seed", type=int, default=0)

    measure = commands.add_parser("measure", help="estimate ||H||_F, Tr H, lambda_max, mu of a config's objective")
    measure.add_argument("config", help="YAML training config")
    measure.add_argument("--checkpoint", help=".pt checkpoint or .safetensors weights (default: the initial weights)")
    measure.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    measure.add_argument("--eta", type=float, help="learning rate for the bounds (default: optim.lr)")
    measure.add_argument("--batch-size", type=int, help="batch size for the bounds (default: data.batch_size)")
    measure.add_argument("--probe-size", type=int, default=64, help="samples in the probe batch")
    measure.add_argument("--probes", type=int, default=16, help="Hutchinson probes")
    measure.add_argument("--lanczos-iters", type=int, default=20, help="Lanczos steps for lambda_max")
    measure.add_argument("--alignment-samples", type=int, default=16, help="one-sample gradients for mu (0: skip)")
    measure.add_argument("--seed", type=int, default=0)
    return parser


def _print(result: dict[str, Any]) -> None:
    rows = result.pop("rows", None)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value:.6g}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if rows:
        print(f"\n{'B':>4}  {'eta_crit':>10}  {'sqrt(B/mu)/eta':>14}")
        for row in rows:
            print(f"{row['batch_size']:>4}  {row['eta_crit']:>10.5f}  {row['bound']:>14.2f}")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run one command, print; a `VfmError` becomes one line on stderr and exit status 2."""
    args = _parser().parse_args(argv)
    try:
        command = {"report": _report, "least-squares": _least_squares, "measure": _measure}[args.command]
        result = command(args)
    except VfmError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
