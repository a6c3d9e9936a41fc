#!/usr/bin/env python
"""Peer-review mechanisms: Gaussian sweeps, review burden, and best-response checks.

  python tools/peer_review.py sweep --papers 5 --prior-mean 0 --prior-std 2 --noise 1 --out r.json
  python tools/peer_review.py sweep --papers 2 3 4 5 10 --prior-mean -2 -1 0 1 --plot gap.png
  python tools/peer_review.py burden --papers 2 3 5 10 --prior-mean -1 0 1 --prior-std 3 --noise 1
  python tools/peer_review.py incentives --quality 3 -0.5 --noise 1 --mechanism isotonic --t-acc 1
  python tools/peer_review.py iclr --prior-mean 5.511 --prior-std 1.009 --temperature -0.513 --paper-counts 1:948 2:255

Bad arguments give one `error:` line on stderr and exit status 2 (`--debug` shows the traceback).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

from vfm.errors import ConfigError, VfmError
from vfm.theory import peer_review as pr
from vfm.theory.peer_review.iclr import iclr_burden, iclr_like_model

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one `error:` line and exit 2 like every vfm CLI."""

    def error(self, message: str) -> None:
        print(f"error: {self.prog}: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _positive(name: str, values: list[float]) -> None:
    bad = [v for v in values if not v > 0]
    if bad:
        raise ConfigError(f"--{name} must be > 0, got {bad[0]}")


def _sweep(args: argparse.Namespace) -> int:
    _positive("papers", args.papers)
    _positive("prior-std", [args.prior_std])
    _positive("noise", args.noise)
    _positive("draws", [args.draws])
    rows = []
    print(f"{'n':>3} {'mu_q':>5} {'sig_r':>5} | {'parallel P':>15} {'sequential S':>15} {'isotonic I':>15} | "
          f"{'gap closed':>13} | {'reviews/n':>9}")
    for n, mean, noise in itertools.product(args.papers, args.prior_mean, args.noise):
        cell = pr.gaussian_cell(n, mean, args.prior_std, noise, n_draws=args.draws, seed=args.seed)
        row = cell.to_dict()
        rows.append(row)
        values = [row[k] for k in ("parallel", "sequential", "isotonic_oracle")]
        cols = " ".join(f"{v['value']:8.3f}+-{v['se']:.3f}" for v in values)
        gap = row["gap_closed"]
        print(f"{n:>3} {mean:>5g} {noise:>5g} | {cols} | {gap['value']:6.3f}+-{gap['se']:.3f} | "
              f"{row['sequential']['reviews'] / n:9.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows[0] if len(rows) == 1 else {"cells": rows}, indent=2) + "\n")
    if args.plot:
        by_noise = len(args.noise) > 1 and len(args.papers) == 1
        x_key, group_key, label = ("noise", "prior_mean", "review noise sigma_r") if by_noise else \
            ("papers", "prior_mean", "papers per author n")
        print(f"wrote {pr.plots.plot_gap_closed(rows, x_key, group_key, args.plot, label)}")
    return 0


def _burden(args: argparse.Namespace) -> int:
    _positive("papers", args.papers)
    _positive("prior-std", [args.prior_std])
    _positive("noise", args.noise)
    rows = []
    print(f"{'n':>3} {'mu_q':>5} {'sig_r':>5} | {'relative burden':>15} {'t_acc=t_rev':>11} {'best P':>8}")
    for mean, n, noise in itertools.product(args.prior_mean, args.papers, args.noise):
        result = pr.gaussian_burden(n, mean, args.prior_std, noise, n_draws=args.draws, seed=args.seed)
        rows.append({"papers": n, "prior_mean": mean, "prior_std": args.prior_std, "noise": noise,
                     "relative_burden": result.relative_burden, "threshold": result.threshold,
                     "parallel_best": result.parallel_best})
        print(f"{n:>3} {mean:>5g} {noise:>5g} | {result.relative_burden:15.3f} {result.threshold:11.3f} "
              f"{result.parallel_best:8.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    if args.plot:
        print(f"wrote {pr.plots.plot_burden(rows, args.plot)}")
    return 0


def _incentives(args: argparse.Namespace) -> int:
    _positive("noise", [args.noise])
    mechanisms = {
        "parallel": lambda: pr.ParallelMechanism(args.t_acc),
        "isotonic": lambda: pr.IsotonicMechanism(args.t_acc),
        "sequential": lambda: pr.SequentialThreshold(args.t_acc, args.t_acc if args.t_rev is None else args.t_rev),
    }
    utilities = {"count": pr.count_utility, "quality": pr.shifted_quality, "above-zero": pr.above_utility,
                 "exp-score": pr.exponential_score_utility}
    mechanism = mechanisms[args.mechanism]()
    result = pr.best_response(mechanism, args.quality, pr.GaussianReview(args.noise), utilities[args.utility](),
                              n_draws=args.draws)
    print(f"{mechanism}, utility {args.utility}, qualities {args.quality}")
    for order, value in sorted(result.values.items(), key=lambda item: -item[1]):
        tag = "  (truthful)" if order == result.truthful_order else ""
        print(f"  ranking {order}: {value:.4f}{tag}")
    print(f"best {result.best_order}: gain {result.gain.mean:.4f} +- {result.gain.se:.4f}; "
          f"profitable misreport: {'yes' if result.profitable() else 'no'}")
    return 0


def _curves(args: argparse.Namespace) -> int:
    _positive("prior-std", [args.prior_std])
    _positive("noise", [args.noise])
    import numpy as np

    rng = np.random.default_rng(args.seed)
    quality = pr.QualityPrior.normal(args.prior_mean, args.prior_std).sample(args.papers, args.draws, rng)
    review = pr.GaussianReview(args.noise)
    thresholds = np.arange(args.low, args.high + 1e-9, args.step)
    parallel, _ = pr.utility_curve("parallel", quality, review, thresholds)
    sequential, reviews = pr.utility_curve("sequential", quality, review, thresholds)
    isotonic = pr.isotonic_curve(quality, review, rng, thresholds)
    print(f"{'t':>6} {'parallel':>9} {'sequential':>10} {'isotonic':>9} {'seq reviews/n':>13}")
    for row in zip(thresholds, parallel, sequential, isotonic, reviews / args.papers, strict=True):
        print(f"{row[0]:6.2f} {row[1]:9.3f} {row[2]:10.3f} {row[3]:9.3f} {row[4]:13.3f}")
    if args.plot:
        title = f"n = {args.papers}, mu_q = {args.prior_mean:g}, sigma_q = {args.prior_std:g}, sigma_r = {args.noise:g}"
        curves = {"parallel": parallel, "sequential (t_rev = t_acc)": sequential, "isotonic, true ranking": isotonic}
        print(f"wrote {pr.plots.plot_threshold_curves(thresholds, curves, args.plot, title)}")
    return 0


def _paper_counts(text: list[str]) -> pr.PaperCountDist:
    try:
        pairs = [item.split(":") for item in text]
        return pr.PaperCountDist.from_counts({int(papers): int(authors) for papers, authors in pairs})
    except ValueError as error:
        raise ConfigError(f"--paper-counts takes PAPERS:AUTHORS pairs like 1:948 2:255, got {' '.join(text)}") from error


def _iclr(args: argparse.Namespace) -> int:
    _positive("prior-std", [args.prior_std])
    _positive("draws", [args.draws])
    model = iclr_like_model(args.prior_mean, args.prior_std, args.temperature, _paper_counts(args.paper_counts),
                            k=args.k, baseline=args.baseline, normalized=args.normalized_map)
    result = iclr_burden(model, n_draws=args.draws, seed=args.seed)
    print(f"authors' mean papers {model.counts.mean:.3f}; {len(result.thresholds)} candidate thresholds")
    print(f"best parallel utility per author   {result.parallel_utility.max():.4f}")
    print(f"best sequential utility per author {result.sequential_utility.max():.4f} "
          f"(gain {100 * result.utility_gain:.2f}%)")
    print(f"relative review burden {result.relative_burden:.3f} (saved {100 * (1 - result.relative_burden):.1f}%)")
    if args.out:
        Path(args.out).write_text(json.dumps({"relative_burden": result.relative_burden,
                                              "utility_gain": result.utility_gain,
                                              "parallel_best": float(result.parallel_utility.max()),
                                              "sequential_best": float(result.sequential_utility.max()),
                                              "mean_papers": model.counts.mean}, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the sub-command and run it."""
    parser = _Parser(prog="peer_review.py", description="Peer-review mechanisms: sweeps, burden, incentives.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sweep = sub.add_parser("sweep", help="best conference utility of parallel, sequential, oracle isotonic")
    sweep.add_argument("--papers", type=int, nargs="+", default=[5], help="papers per author (several: a sweep)")
    sweep.add_argument("--prior-mean", type=float, nargs="+", default=[0.0], help="prior mean(s) of quality")
    sweep.add_argument("--prior-std", type=float, default=2.0, help="prior std of quality")
    sweep.add_argument("--noise", type=float, nargs="+", default=[1.0], help="review noise std(s)")
    sweep.add_argument("--draws", type=int, default=200_000, help="authors drawn per cell (shared by mechanisms)")
    sweep.add_argument("--seed", type=int, default=0)
    sweep.add_argument("--out", help="JSON: one cell's dict, or {'cells': [...]} for several")
    sweep.add_argument("--plot", help="PNG of gap closed")
    sweep.set_defaults(run=_sweep)

    burden = sub.add_parser("burden", help="fewest reviews per paper at parallel's best utility (t_rev = t_acc)")
    burden.add_argument("--papers", type=int, nargs="+", default=[2, 3, 5, 10])
    burden.add_argument("--prior-mean", type=float, nargs="+", default=[-1.0, 0.0, 1.0])
    burden.add_argument("--prior-std", type=float, default=3.0)
    burden.add_argument("--noise", type=float, nargs="+", default=[1.0])
    burden.add_argument("--draws", type=int, default=200_000)
    burden.add_argument("--seed", type=int, default=0)
    burden.add_argument("--out", help="JSON list of rows")
    burden.add_argument("--plot", help="PNG of relative burden against n")
    burden.set_defaults(run=_burden)

    incent = sub.add_parser("incentives", help="expected author utility of every ranking of one author's papers")
    incent.add_argument("--quality", type=float, nargs="+", required=True, help="true qualities, any order")
    incent.add_argument("--noise", type=float, default=1.0)
    incent.add_argument("--mechanism", choices=["parallel", "isotonic", "sequential"], default="sequential")
    incent.add_argument("--utility", choices=["count", "quality", "above-zero", "exp-score"], default="count")
    incent.add_argument("--t-acc", type=float, default=1.0)
    incent.add_argument("--t-rev", type=float, help="sequential review threshold (default: t_acc)")
    incent.add_argument("--draws", type=int, default=100_000, help="Monte Carlo draws when no closed form")
    incent.set_defaults(run=_incentives)

    curves = sub.add_parser("curves", help="conference utility of each mechanism against the threshold")
    curves.add_argument("--papers", type=int, default=5)
    curves.add_argument("--prior-mean", type=float, default=0.0)
    curves.add_argument("--prior-std", type=float, default=2.0)
    curves.add_argument("--noise", type=float, default=1.0)
    curves.add_argument("--low", type=float, default=-1.5)
    curves.add_argument("--high", type=float, default=1.5)
    curves.add_argument("--step", type=float, default=0.1)
    curves.add_argument("--draws", type=int, default=100_000)
    curves.add_argument("--seed", type=int, default=0)
    curves.add_argument("--plot", help="PNG of the curves")
    curves.set_defaults(run=_curves)

    iclr = sub.add_parser("iclr", help="review burden on the ICLR-like model from fitted parameters")
    iclr.add_argument("--prior-mean", type=float, required=True, help="mean of per-paper average scores")
    iclr.add_argument("--prior-std", type=float, required=True, help="std of per-paper average scores")
    iclr.add_argument("--temperature", type=float, default=-0.513, help="fitted t in P(s|q) ~ exp(t (s-q)^2)")
    iclr.add_argument("--k", type=int, default=3, help="reviews per paper")
    iclr.add_argument("--paper-counts", nargs="+", required=True, metavar="PAPERS:AUTHORS")
    iclr.add_argument("--baseline", type=float, default=5.5)
    iclr.add_argument("--normalized-map", action="store_true", help="keep log Z(q) in the MAP likelihood")
    iclr.add_argument("--draws", type=int, default=10_000, help="quality draws per paper count")
    iclr.add_argument("--seed", type=int, default=0)
    iclr.add_argument("--out", help="JSON summary")
    iclr.set_defaults(run=_iclr)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except VfmError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
