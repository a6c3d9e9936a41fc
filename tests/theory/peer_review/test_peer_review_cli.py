"""tools/peer_review.py as a user runs it: the JSON of one sweep cell, the incentives table, and bad input."""

from __future__ import annotations

import json

import pytest

from conftest import run_tool


def test_sweep_writes_one_cells_json(tmp_path):
    out = tmp_path / "r.json"
    result = run_tool("peer_review", "sweep", "--papers", "5", "--prior-mean", "0", "--prior-std", "2", "--noise",
                      "1", "--draws", "4000", "--out", out, check=True)
    data = json.loads(out.read_text())
    for key in ("parallel", "sequential", "isotonic_oracle", "gap_closed"):
        assert 0 < data[key]["se"] < 0.1, (key, data[key])
    # Official arrays for this cell: 3.526 / 3.621 / 3.674; 4,000 draws are within ~5%.
    assert data["parallel"]["value"] == pytest.approx(3.57, rel=0.05)
    assert data["parallel"]["value"] < data["sequential"]["value"] < data["isotonic_oracle"]["value"] + 0.05
    assert 0.3 < data["gap_closed"]["value"] < 1.0
    assert "gap closed" in result.stdout


def test_incentives_reports_the_isotonic_misreport():
    result = run_tool("peer_review", "incentives", "--quality", "3", "-0.5", "--mechanism", "isotonic",
                      "--t-acc", "1", "--draws", "20000", check=True)
    assert "profitable misreport: yes" in result.stdout
    line = next(row for row in result.stdout.splitlines() if "(1, 0)" in row and "ranking" in row)
    assert float(line.split(":")[1]) == pytest.approx(1.28, abs=0.03)


@pytest.mark.parametrize("args, fragment", [
    (["sweep", "--papers", "0"], "--papers must be > 0"),
    (["sweep", "--noise", "-1"], "--noise must be > 0"),
    (["sweep", "--papers", "five"], "invalid int value"),
    (["iclr", "--prior-mean", "5.5", "--prior-std", "1", "--paper-counts", "1-948"], "PAPERS:AUTHORS"),
    (["incentives", "--quality", "1", "2", "3", "4", "5", "6", "7", "8"], "n_papers <= 7"),
])
def test_bad_arguments_give_one_error_line_and_exit_2(args, fragment):
    result = run_tool("peer_review", *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert fragment in errors[0]
