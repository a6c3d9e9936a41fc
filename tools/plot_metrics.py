#!/usr/bin/env python
"""Plot a run's metrics.jsonl as a PNG: python tools/plot_metrics.py METRICS_JSONL [--out PNG] [--keys KEY ...]."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from vfm.cli import OneLineErrorParser
from vfm.engine.plot import plot_metrics
from vfm.errors import VfmError

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, plot, and turn a `VfmError` into one line on stderr with exit status 2."""
    parser = OneLineErrorParser(prog="plot_metrics.py", description=__doc__.splitlines()[0].split(":")[0] + ".")
    parser.add_argument("metrics", help="a run's metrics.jsonl (or its work dir)")
    parser.add_argument("--out", help="image path (default: metrics.png beside the metrics file)")
    parser.add_argument(
        "--keys",
        nargs="+",
        metavar="KEY",
        help="metrics to plot: a name (loss) matches every split, split/name (val/loss) one; default all",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    try:
        out, plotted = plot_metrics(args.metrics, args.out, args.keys)
    except VfmError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {out}: {', '.join(plotted)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
