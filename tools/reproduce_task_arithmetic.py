#!/usr/bin/env python
"""Task arithmetic on CPU, the whole protocol: pre-train a small ViT on digits, fine-tune it on derived tasks in the
standard, attention-only and linearised modes under one schedule, then the paper's tables and heatmaps.

    python tools/reproduce_task_arithmetic.py --out runs/ta                 # ~15-20 min on 2 shared CPU cores
    python tools/reproduce_task_arithmetic.py --out /tmp/ta_quick --pretrain-steps 200 --finetune-steps 20 --grid 5
    python tools/task_arithmetic.py report runs/ta                          # the tables again, from results.json
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from vfm.errors import VfmError

REPO = Path(__file__).resolve().parents[1]
EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    """Run the protocol into --out and print the report; errors as one line, exit status 2."""
    parser = argparse.ArgumentParser(prog="reproduce_task_arithmetic.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/ta", help="run folder (reused runs are kept; results.json is rewritten)")
    parser.add_argument("--tasks", nargs="+", default=["rotated", "flipped", "inverted", "parity", "geq5"])
    parser.add_argument("--modes", nargs="+", default=["standard", "attn_only", "linearized"])
    parser.add_argument("--control", default="identity", help="control task of negation (the pre-training-like task)")
    parser.add_argument("--pair", nargs=2, default=["rotated", "inverted"], help="the disentanglement pair")
    parser.add_argument("--pretrain-steps", type=int, default=1200)
    parser.add_argument("--finetune-steps", type=int, default=200)
    parser.add_argument("--grid", type=int, default=15, help="disentanglement grid points per axis, on [-2, 2]")
    parser.add_argument("--threshold", type=float, default=0.95, help="negation: control >= threshold x pre-trained")
    parser.add_argument("--figures", action="store_true", help="also copy the heatmaps to docs/img/task_arithmetic_*.png")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from vfm.task_arithmetic.protocol import run_protocol
    from vfm.task_arithmetic.report import format_report

    try:
        unknown = [p for p in args.pair if p not in args.tasks]
        if unknown:
            raise VfmError(f"--pair: {unknown[0]!r} is not among --tasks {args.tasks}")
        results = run_protocol(args.out, args.tasks, args.modes, args.control, args.pair, args.pretrain_steps,
                               args.finetune_steps, args.grid, threshold=args.threshold)
    except VfmError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.figures:
        for mode in args.modes:
            shutil.copy(Path(args.out) / f"disentanglement_{mode}.png", REPO / "docs" / "img" / f"task_arithmetic_{mode}.png")
    print(format_report(results))
    print(f"timings: {results['run']['timings']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
