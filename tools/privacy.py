#!/usr/bin/env python
"""Last-iterate vs composition privacy: python tools/privacy.py {epsilon,noise,plot,tables} ... (see --help)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from vfm.errors import ConfigError, VfmError

EXIT_USAGE = 2


def _contraction(args: argparse.Namespace) -> float:
    from vfm.theory.privacy.guards import contraction_factor

    if args.c is not None:
        return args.c
    if args.strong_convexity is None or args.smoothness is None or args.eta is None:
        raise ConfigError("--c, or --strong-convexity, --smoothness and --eta: the step's contraction factor is needed")
    return contraction_factor(args.strong_convexity, args.smoothness, args.eta)


def _accountant(args: argparse.Namespace, sigma: float | None = None) -> Any:
    from vfm.theory.privacy.accountant import LastIterateAccountant

    sigma = sigma if sigma is not None else args.sigma
    if args.mu0 is not None and (args.sensitivity is not None or sigma is not None):
        raise ConfigError("--mu0: give it alone, or --sensitivity with --sigma")
    return LastIterateAccountant(args.schedule, _contraction(args), mu0=args.mu0, gradient_sensitivity=args.sensitivity,
                                 sigma=sigma, batches_per_epoch=args.batches_per_epoch, sample_rate=args.sample_rate,
                                 eta=args.eta if args.diameter is not None else None, diameter=args.diameter,
                                 poisson_method=args.poisson_method)


def _steps(args: argparse.Namespace, accountant: Any) -> int:
    if args.epochs < 1:
        raise ConfigError(f"--epochs: got {args.epochs}, expected >= 1")
    return args.epochs * accountant.batches_per_epoch


def _epsilon(args: argparse.Namespace) -> dict[str, Any]:
    accountant = _accountant(args)
    return accountant.report(args.delta, _steps(args, accountant))


def _noise(args: argparse.Namespace) -> dict[str, Any]:
    from vfm.theory.privacy.accountant import noise_for_epsilon

    if args.sensitivity is None or args.mu0 is not None or args.sigma is not None:
        raise ConfigError("noise: give --sensitivity (of one step's mean gradient), not --mu0 or --sigma")
    steps = _steps(args, _accountant(args, sigma=1.0))
    result: dict[str, Any] = {"target_epsilon": args.target_epsilon, "delta": args.delta, "steps": steps}
    for accounting in ("last_iterate", "composition"):
        sigma = noise_for_epsilon(args.target_epsilon, args.delta, steps, lambda s: _accountant(args, sigma=s), accounting)
        result[f"sigma_{accounting}"] = sigma
    return result


def _plot(args: argparse.Namespace) -> dict[str, Any]:
    from vfm.theory.privacy.plot import plot_epsilon_curve

    accountant = _accountant(args)
    epochs = sorted({*range(1, args.epochs + 1, max(1, args.epochs // 60)), args.epochs})
    path = plot_epsilon_curve(accountant, epochs, args.delta, args.out)
    curve = accountant.curve([epochs[-1] * accountant.batches_per_epoch], args.delta)
    return {"png": str(path), "epochs": epochs[-1], "epsilon_last_iterate": float(curve.epsilon_last_iterate[-1]),
            "epsilon_composition": float(curve.epsilon_composition[-1])}


def _tables(args: argparse.Namespace) -> dict[str, Any]:
    from vfm.theory.privacy.reproduction import figure_1_rows, mnist_rows

    return {"figure_1": figure_1_rows(), "mnist_table_1": mnist_rows()}


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--schedule", choices=("full", "cyclic", "poisson"), default="full", help="batch schedule")
    parser.add_argument("--mu0", type=float, help="GDP of one step (instead of --sensitivity and --sigma)")
    parser.add_argument("--sensitivity", type=float, help="l2-sensitivity of one step's mean gradient (2L/b)")
    parser.add_argument("--sigma", type=float, help="std of the noise added to the gradient")
    parser.add_argument("--c", type=float, help="contraction factor of one gradient step")
    parser.add_argument("--strong-convexity", type=float, help="m (instead of --c, with --smoothness and --eta)")
    parser.add_argument("--smoothness", type=float, help="M")
    parser.add_argument("--eta", type=float, help="step size")
    parser.add_argument("--diameter", type=float, help="diameter of the constraint set (convex case, needs --eta)")
    parser.add_argument("--batches-per-epoch", type=int, default=1, help="l for cyclic batches")
    parser.add_argument("--sample-rate", type=float, help="Poisson inclusion probability")
    parser.add_argument("--poisson-method", choices=("clt", "pld"), default="clt",
                        help="how the approximate Poisson last-iterate value evaluates its subsampled part")
    parser.add_argument("--epochs", type=int, default=1, help="epochs (steps for full batches)")
    parser.add_argument("--delta", type=float, default=1e-5)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="privacy.py", description="Last-iterate (shifted interpolation) vs composition privacy.")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_run_arguments(commands.add_parser("epsilon", help="epsilon of given parameters, both accountings"))
    noise = commands.add_parser("noise", help="the sigma that reaches a target epsilon, under each accounting")
    _add_run_arguments(noise)
    noise.add_argument("--target-epsilon", type=float, required=True)
    plot = commands.add_parser("plot", help="PNG of epsilon vs epochs for both accountings")
    _add_run_arguments(plot)
    plot.add_argument("--out", required=True, help="PNG path")
    commands.add_parser("tables", help="the paper's Figure-1 toy values and MNIST-setting Table 1, recomputed")
    return parser


def _print(result: dict[str, Any], prefix: str = "") -> None:
    for key, value in result.items():
        if isinstance(value, dict):
            _print(value, f"{prefix}{key}.")
        elif isinstance(value, list):
            print(f"{prefix}{key}:")
            for row in value:
                print("  " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        else:
            print(f"{prefix}{key}  {value:.6g}" if isinstance(value, float) else f"{prefix}{key}  {value}")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run one command, print; a `VfmError` becomes one line on stderr and exit status 2."""
    args = _parser().parse_args(argv)
    try:
        command = {"epsilon": _epsilon, "noise": _noise, "plot": _plot, "tables": _tables}[args.command]
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
