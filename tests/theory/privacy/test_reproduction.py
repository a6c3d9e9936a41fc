"""The recomputed paper tables: Figure 1 and the MNIST setting (the numbers docs/privacy.md reports)."""

from __future__ import annotations

import pytest

from vfm.theory.privacy.reproduction import figure_1_rows, mnist_rows


def test_figure_1_rows():
    rows = figure_1_rows()
    assert [r["T"] for r in rows] == [10, 20, 40, 80, 160]
    assert [round(r["mu_last_iterate"], 4) for r in rows] == [0.3129, 0.4291, 0.5488, 0.6143, 0.6243]
    assert [round(r["epsilon_composition"], 3) for r in rows] == [1.199, 1.760, 2.594, 3.849, 5.759]


def test_mnist_rows_without_sgd():
    rows = {r["E"]: r for r in mnist_rows(with_sgd=False)}
    assert rows[50]["mu0"] == pytest.approx(2 / 3)
    assert rows[50]["c_0.002"] == pytest.approx(0.9999) and rows[50]["c_0.004"] == pytest.approx(0.9998)
    expected = {50: (4.714, 30.506, 0.9925, 4.339, 0.9889, 4.321), 100: (6.667, 49.884, 1.2353, 5.601, 1.2175, 5.506),
                200: (9.428, 83.831, 1.5930, 7.579, 1.5061, 7.086)}
    for epochs, values in expected.items():
        row = rows[epochs]
        found = (row["cgd_composition_mu"], row["cgd_composition_epsilon"], row["cgd_last_iterate_mu_0.002"],
                 row["cgd_last_iterate_epsilon_0.002"], row["cgd_last_iterate_mu_0.004"], row["cgd_last_iterate_epsilon_0.004"])
        assert found == pytest.approx(values, abs=5e-4)
