"""tools/privacy.py called through its main(): numbers, the PNG, and one-line errors with exit status 2."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[3] / "tools" / "privacy.py"


@pytest.fixture(scope="module")
def privacy_main():
    spec = importlib.util.spec_from_file_location("privacy_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def run(main, capsys, *argv: str) -> tuple[int, dict | None, str]:
    code = main(["--json", *argv])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if code == 0 else None, captured.err


def test_epsilon_reports_both_accountings(privacy_main, capsys):
    code, report, _ = run(privacy_main, capsys, "epsilon", "--mu0", "0.1", "--c", "0.95", "--epochs", "160")
    assert code == 0
    assert report["last_iterate"]["epsilon"] == pytest.approx(2.557, abs=5e-4)
    assert report["all_iterates"]["gdp"] == pytest.approx(5.759, abs=5e-4)
    code, report, _ = run(privacy_main, capsys, "epsilon", "--schedule", "cyclic", "--sensitivity", "0.4",
                          "--sigma", "2", "--strong-convexity", "0.1", "--smoothness", "2", "--eta", "0.2",
                          "--batches-per-epoch", "10", "--epochs", "50")
    assert code == 0 and report["last_iterate"]["mu"] == pytest.approx(0.270, abs=5e-4)  # c = 0.98, mu0 = 0.2


def test_noise_reaches_the_target_and_plot_writes_a_png(privacy_main, capsys, tmp_path):
    code, found, _ = run(privacy_main, capsys, "noise", "--sensitivity", "0.1", "--c", "0.95", "--epochs", "160",
                         "--target-epsilon", "1")
    assert code == 0 and found["sigma_last_iterate"] < found["sigma_composition"]
    code, check, _ = run(privacy_main, capsys, "epsilon", "--sensitivity", "0.1", "--sigma", str(found["sigma_last_iterate"]),
                         "--c", "0.95", "--epochs", "160")
    assert check["last_iterate"]["epsilon"] == pytest.approx(1.0, abs=1e-4)
    png = tmp_path / "eps.png"
    code, plotted, _ = run(privacy_main, capsys, "plot", "--mu0", "0.1", "--c", "0.95", "--epochs", "160", "--out", str(png))
    assert code == 0 and png.read_bytes()[:4] == b"\x89PNG" and plotted["epochs"] == 160
    assert plotted["epsilon_last_iterate"] == pytest.approx(2.557, abs=5e-4)


@pytest.mark.parametrize(("argv", "start"), [
    (["epsilon", "--mu0", "0.1", "--c", "1.2"], "error: c: got 1.2 > 1"),
    (["epsilon", "--sensitivity", "0.1", "--sigma", "0", "--c", "0.9"], "error: sigma: got 0.0"),
    (["epsilon", "--mu0", "0.1", "--strong-convexity", "0.1", "--smoothness", "2", "--eta", "1.5"], "error: eta: got 1.5 > 2/M"),
    (["noise", "--mu0", "0.1", "--c", "0.9", "--target-epsilon", "1"], "error: noise: give --sensitivity"),
])
def test_bad_input_is_one_line_and_exit_2(privacy_main, capsys, argv, start):
    code, _, err = run(privacy_main, capsys, *argv)
    assert code == 2 and err.startswith(start) and err.strip().count("\n") == 0
