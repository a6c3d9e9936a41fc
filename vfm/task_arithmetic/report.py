"""The paper's tables for one run folder (results.json), with the paper's ViT numbers beside ours."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vfm.errors import ConfigError

# Jin et al. 2025, mean single-task accuracy over 8 tasks (official figure script): full FT, NTK-linearised,
# attention-only. Addition/negation: the tangent paper's (Ortiz-Jimenez et al. 2023) baselines as recalled in
# ../shared/papers/task-arithmetic.md, marked unverified there; Jin's own tables are unverified too.
PAPER_SINGLE = {"ViT-B/32": (90.49, 88.95, 89.55), "ViT-B/16": (92.43, 91.36, 91.92), "ViT-L/14": (94.06, 93.34, 93.65)}
PAPER_ADDITION_UNVERIFIED = {"ViT-B/32": ((71.4, 76.5), (76.5, 85.8)), "ViT-B/16": ((75.5, 80.6), (81.3, 86.0)),
                             "ViT-L/14": ((85.1, 88.8), (88.5, 93.5))}
PAPER_NEGATION_UNVERIFIED = {"ViT-B/32": ((24.0, 60.7), (10.9, 60.8)), "ViT-B/16": ((19.2, 64.6), (11.3, 64.8)),
                             "ViT-L/14": ((18.0, 72.5), (7.9, 72.5))}
MODE_ORDER = ("standard", "linearized", "attn_only")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.1f}"


def load_results(run_dir: str | Path) -> dict[str, Any]:
    """run_dir/results.json; a missing or unreadable file is a ConfigError naming it."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no results.json (write one with tools/reproduce_task_arithmetic.py or the "
                          "add / negate / disentangle commands' --out)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON ({error})") from error


def format_report(results: dict[str, Any]) -> str:
    """Markdown tables: single-task, addition, negation, kernel gap, disentanglement, then the paper's numbers."""
    lines: list[str] = []
    modes = [m for m in MODE_ORDER if m in results.get("single", {})] + [
        m for m in results.get("single", {}) if m not in MODE_ORDER]
    if modes:
        tasks = list(results["single"][modes[0]])
        lines += ["## Single-task test accuracy (%)", "", "| task | pre-trained | " + " | ".join(modes) + " |",
                  "|---|---|" + "---|" * len(modes)]
        for task in tasks:
            pre = results["single"][modes[0]][task].get("pretrained_test")
            lines.append(f"| {task} | {_pct(pre)} | " + " | ".join(_pct(results['single'][m].get(task, {}).get('test'))
                                                                 for m in modes) + " |")
        means = [sum(r["test"] for r in results["single"][m].values()) / len(results["single"][m]) for m in modes]
        pre_mean = sum(r["pretrained_test"] for r in results["single"][modes[0]].values()) / len(tasks)
        lines += [f"| **mean** | {_pct(pre_mean)} | " + " | ".join(_pct(v) for v in means) + " |", ""]
    if results.get("addition"):
        lines += ["## Task addition (test, alpha chosen on validation)", "",
                  "| mode | alpha | absolute (%) | normalised (%) |", "|---|---|---|---|"]
        for mode, row in results["addition"].items():
            lines.append(f"| {mode} | {row['alpha']:.2f} | {_pct(row['absolute'])} | {_pct(row['normalized'])} |")
        lines.append("")
    if results.get("negation"):
        lines += ["## Task negation (test; control >= threshold x pre-trained control on validation)", "",
                  "| mode | target | control | alpha | target acc (%) | control acc (%) | pre-trained target / control (%) |",
                  "|---|---|---|---|---|---|---|"]
        for mode, rows in results["negation"].items():
            for row in rows if isinstance(rows, list) else [rows]:
                lines.append(f"| {mode} | {row['target']} | {row['control']} | {row['alpha']:.2f} | "
                             f"{_pct(row['target_accuracy'])} | {_pct(row['control_accuracy'])} | "
                             f"{_pct(row['pretrained_target_accuracy'])} / {_pct(row['pretrained_control_accuracy'])} |")
            if isinstance(rows, list) and rows:
                target = sum(r["target_accuracy"] for r in rows) / len(rows)
                control = sum(r["control_accuracy"] for r in rows) / len(rows)
                lines.append(f"| {mode} | **mean** | | | {_pct(target)} | {_pct(control)} | |")
        lines.append("")
    if results.get("kernel_gap"):
        lines += ["## Kernel behaviour: fine-tuned vs its post-hoc linearisation (test accuracy %)", "",
                  "| mode | task | non-linear | post-hoc linearised | non-linear advantage |", "|---|---|---|---|---|"]
        for mode, rows in results["kernel_gap"].items():
            for task, row in rows.items():
                lines.append(f"| {mode} | {task} | {_pct(row['nonlinear'])} | {_pct(row['linearized'])} | "
                             f"{row['nonlinear_advantage']:.3f} |")
        lines.append("")
    if results.get("disentanglement"):
        lines += ["## Weight disentanglement error (mean / max over the grid; lower is better)", "",
                  "| mode | pair | grid | mean xi | max xi | xi within |alpha| <= 1 |", "|---|---|---|---|---|---|"]
        for mode, row in results["disentanglement"].items():
            alphas = row["alphas"]
            inner = [row["matrix"][i][j] for i, a in enumerate(alphas) for j, b in enumerate(alphas)
                     if abs(a) <= 1 and abs(b) <= 1]
            lines.append(f"| {mode} | {'-'.join(row['tasks'])} | {len(alphas)}x{len(alphas)} on "
                         f"[{alphas[0]:g}, {alphas[-1]:g}] | {row['mean_error']:.3f} | {row['max_error']:.3f} | "
                         f"{sum(inner) / max(len(inner), 1):.3f} |")
        lines.append("")
    lines += ["## The paper's numbers (8 vision tasks, CLIP ViTs)", "",
              "| model | single-task full FT / NTK-linearised / attention-only (%) | addition abs/norm non-linear, "
              "linearised (%) [unverified] | negation target/control non-linear, linearised (%) [unverified] |",
              "|---|---|---|---|"]
    for model, single in PAPER_SINGLE.items():
        (a_nl, a_lin), (n_nl, n_lin) = PAPER_ADDITION_UNVERIFIED[model], PAPER_NEGATION_UNVERIFIED[model]
        lines.append(f"| {model} | {single[0]} / {single[1]} / {single[2]} | {a_nl[0]}/{a_nl[1]}, {a_lin[0]}/{a_lin[1]} | "
                     f"{n_nl[0]}/{n_nl[1]}, {n_lin[0]}/{n_lin[1]} |")
    return "\n".join(lines) + "\n"


__all__ = ["PAPER_ADDITION_UNVERIFIED", "PAPER_NEGATION_UNVERIFIED", "PAPER_SINGLE", "format_report", "load_results"]
