#!/usr/bin/env python
"""Reproduce the privacy results: python tools/reproduce_privacy.py [--out-dir docs/img] [--json FILE].

Prints the paper's Figure-1 toy values and the MNIST-setting Table 1 recomputed by vfm.theory.privacy, then
trains configs/privacy/dp_logreg_digits.yaml (validation every epoch) and plots epsilon under both accountings
and accuracy against epochs (privacy_digits.png), plus the Figure-1 curve (privacy_figure1.png).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "privacy" / "dp_logreg_digits.yaml"


def digits_run(work_dir: Path, overrides: list[str]) -> dict:
    """Train the digits config with an evaluation after every epoch; its privacy history and accuracies."""
    from vfm.config import load_config
    from vfm.engine.run_config import RunConfig
    from vfm.engine.trainer import Trainer

    cfg = load_config(CONFIG, [f"work_dir={work_dir}", "eval.interval=5", "checkpoint.interval=0",
                               "train.progress_bar=never", *overrides], RunConfig)
    trainer = Trainer(cfg, work_dir)
    trainer.train()
    records = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]
    per_epoch = trainer.objective.batches_per_epoch
    accuracy = [(r["step"] // per_epoch, r["accuracy"]) for r in records if r["split"] == "val"]
    return {"sigma": trainer.objective.sigma, "history": trainer.objective.history, "accuracy": accuracy}


def main() -> int:
    """Print the tables, train, write the PNGs; a JSON summary on stdout or to --json."""
    parser = argparse.ArgumentParser(prog="reproduce_privacy.py")
    parser.add_argument("--out-dir", default=str(REPO / "docs" / "img"), help="where the PNGs go")
    parser.add_argument("--json", help="also write the summary here")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the digits config")
    args = parser.parse_args()
    from vfm.theory.privacy.accountant import LastIterateAccountant
    from vfm.theory.privacy.plot import plot_epsilon_curve, plot_run
    from vfm.theory.privacy.reproduction import FIGURE_1, figure_1_rows, mnist_rows

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"figure_1": figure_1_rows(), "mnist_table_1": mnist_rows()}
    plot_epsilon_curve(LastIterateAccountant("full", FIGURE_1["c"], mu0=FIGURE_1["mu0"]), list(range(1, 161)),
                       FIGURE_1["delta"], out / "privacy_figure1.png", title="noisy GD, c = 0.95, mu0 = 0.1 (Figure 1)")
    from vfm.errors import VfmError

    try:
        with tempfile.TemporaryDirectory() as work:
            run = digits_run(Path(work), args.overrides)
    except VfmError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary["digits"] = run
    plot_run(run["history"], run["accuracy"], out / "privacy_digits.png",
             title=f"DP softmax regression on digits, noisy cyclic GD, sigma = {run['sigma']:.4f}")
    text = json.dumps(summary, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
