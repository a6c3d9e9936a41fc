"""tools/stability.py as a user runs it."""

from __future__ import annotations

import json
import math

import pytest

from conftest import run_tool

pytestmark = pytest.mark.slow  # subprocesses that import torch: seconds alone, tens of seconds on a loaded machine


def test_report_prints_the_bound_and_bad_args_exit_2_with_one_line():
    out = run_tool("stability", "--json", "report", "--eta", "0.1", "--batch-size", "4", "--hessian-frobenius", "23.7",
                   "--mu", "0.44", "--top-eigenvalue", "9", check=True)
    report = json.loads(out.stdout)
    assert report["frobenius_bound"] == pytest.approx(math.sqrt(4 / 0.44) / 0.1)
    assert report["gd_ratio"] == pytest.approx(0.45)
    bad = run_tool("stability", "report", "--eta", "0", "--batch-size", "4", "--hessian-frobenius", "1", "--mu", "1")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and bad.stderr.startswith("error: report: --eta 0.0")


def test_least_squares_bound_holds_for_every_batch_size():
    out = run_tool("stability", "--json", "least-squares", "--samples", "8", "--dim", "16", "--batch-sizes", "1", "4",
                   check=True)
    result = json.loads(out.stdout)
    assert [row["batch_size"] for row in result["rows"]] == [1, 4]
    assert all(result["hessian_frobenius"] <= row["bound"] for row in result["rows"])
    assert result["rows"][0]["eta_crit"] < result["rows"][1]["eta_crit"] < result["gd_critical_eta"]
