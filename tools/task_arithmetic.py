#!/usr/bin/env python
"""Task arithmetic: python tools/task_arithmetic.py {params,build,add,negate,disentangle,report} ... (see --help).

    python tools/task_arithmetic.py params CONFIG                      # trainable / total per selector, no training
    python tools/task_arithmetic.py build --pretrained P.safetensors --finetuned A.safetensors B.safetensors --out vectors/
    python tools/task_arithmetic.py add CONFIG --vectors vectors/*.safetensors   # alpha on val, report on test
    python tools/task_arithmetic.py negate CONFIG --vector vectors/A.safetensors --control TASK
    python tools/task_arithmetic.py disentangle CONFIG --vectors A B --grid 15 --out plots/
    python tools/task_arithmetic.py report RUN_DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vfm.errors import ConfigError, VfmError

EXIT_USAGE = 2


def _split(items: Sequence[str], overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """Files and key=value overrides from one positional list (a name with '=' that exists is a file)."""
    files = [a for a in items if "=" not in a or Path(a).exists()]
    return files, [*overrides, *(a for a in items if a not in files)]


def _params(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from vfm.config import load_config
    from vfm.engine.run_config import RunConfig
    from vfm.registry import BACKBONES, import_custom_modules
    from vfm.task_arithmetic.objective import check_finetune
    from vfm.task_arithmetic.selectors import selection_table

    cfg = load_config(args.config, args.overrides, RunConfig)
    import_custom_modules(cfg.custom_imports)
    objective = dict(cfg.objective)
    if "backbone" not in objective:
        raise ConfigError(f"{args.config}: objective.backbone is missing; params counts a backbone's parameters")
    classes = 0 if objective.get("type") == "task_arithmetic" else objective.get("num_classes", 0)
    with torch.device("meta"):  # no memory, no weights: counts only
        backbone = BACKBONES.build({**objective["backbone"], "num_classes": classes}, "objective.backbone")
    rows = selection_table(backbone)
    mode, rule = check_finetune(objective.get("finetune"), "objective.finetune") if objective.get(
        "type") == "task_arithmetic" else ("standard", "all")
    return {"config": str(args.config), "backbone": type(backbone).__name__, "mode": mode, "rule": rule, "rows": rows}


def _build(args: argparse.Namespace) -> dict[str, Any]:
    from vfm.task_arithmetic.workflow import build_vectors

    written = build_vectors(args.pretrained, args.finetuned, args.out, args.rule, args.mode, args.task)
    return {"vectors": [str(p) for p in written]}


def _add(args: argparse.Namespace) -> dict[str, Any]:
    from vfm.task_arithmetic.evaluate import default_alphas, single_task, task_addition
    from vfm.task_arithmetic.workflow import load_vectors, make_editor, update_results

    files, overrides = _split(args.vectors, args.overrides)
    vectors = load_vectors(files)
    editor = make_editor(args.config, overrides, vectors, max_batches=args.max_batches)
    single = single_task(editor)
    result = {"mode": vectors[0].mode, "single": single,
              **task_addition(editor, single, default_alphas(args.alphas))}
    if args.out:
        update_results(args.out, "single", result["mode"], single)
        update_results(args.out, "addition", result["mode"], {k: v for k, v in result.items() if k != "single"})
    return result


def _negate(args: argparse.Namespace) -> dict[str, Any]:
    from vfm.task_arithmetic.evaluate import default_alphas, task_negation
    from vfm.task_arithmetic.workflow import load_vectors, make_editor, update_results

    vectors = load_vectors([args.vector])
    editor = make_editor(args.config, args.overrides, vectors, extra_tasks=[args.control], max_batches=args.max_batches)
    result = task_negation(editor, vectors[0].task, args.control, default_alphas(args.alphas), args.threshold)
    if args.out:
        update_results(args.out, "negation", vectors[0].mode, [result])
    return result


def _disentangle(args: argparse.Namespace) -> dict[str, Any]:
    from vfm.task_arithmetic.evaluate import default_alphas, disentanglement
    from vfm.task_arithmetic.workflow import load_vectors, make_editor, plot_disentanglement, update_results

    files, overrides = _split(args.vectors, args.overrides)
    if len(files) != 2:
        raise ConfigError(f"--vectors: got {len(files)} files, expected exactly two (a pair of tasks)")
    if args.grid < 2 or args.range <= 0:
        raise ConfigError(f"--grid {args.grid} --range {args.range}: expected a grid >= 2 and a range > 0")
    vectors = load_vectors(files)
    editor = make_editor(args.config, overrides, vectors, max_batches=args.max_batches)
    result = disentanglement(editor, vectors[0].task, vectors[1].task, default_alphas(args.grid, -args.range, args.range))
    mode = vectors[0].mode
    png = plot_disentanglement(result, Path(args.out) / f"disentanglement_{mode}_{'_'.join(result['tasks'])}.png",
                               f"{mode}: {result['tasks'][0]} vs {result['tasks'][1]}")
    update_results(args.out, "disentanglement", mode, result)
    return {**result, "png": str(png)}


def _report(args: argparse.Namespace) -> str:
    from vfm.task_arithmetic.report import format_report, load_results

    return format_report(load_results(args.run_dir))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="task_arithmetic.py", description="Task vectors and their evaluations.")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("config", help="the fine-tuning YAML config (its objective, data.val and eval.sets.test)")
        sub.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
        return sub

    with_config("params", "trainable / total parameters per selector rule, without training")

    build = commands.add_parser("build", help="task vectors fine-tuned - pre-trained, as safetensors")
    build.add_argument("--pretrained", required=True, help="the pre-trained weights (.safetensors or .pt)")
    build.add_argument("--finetuned", required=True, nargs="+", help="fine-tuned weights, one vector each")
    build.add_argument("--out", required=True, help="folder for <task>_<mode>.safetensors")
    build.add_argument("--rule", help="parameter rule (default: the one the run trained)")
    build.add_argument("--mode", help="fine-tuning mode (default: from the run's config.yaml)")
    build.add_argument("--task", nargs="+", help="task names, one per fine-tuned file (default: from config.yaml)")

    for name, help_text in (("add", "task addition: one alpha chosen on validation, reported on test"),
                            ("negate", "task negation under a control-accuracy threshold"),
                            ("disentangle", "weight-disentanglement error over an (alpha1, alpha2) grid, heatmap PNG")):
        sub = with_config(name, help_text)
        if name == "negate":
            sub.add_argument("--vector", required=True, help="the task vector to negate")
            sub.add_argument("--control", required=True, help="the control task (e.g. identity)")
            sub.add_argument("--threshold", type=float, default=0.95, help="control >= threshold x pre-trained control")
        else:
            sub.add_argument("--vectors", required=True, nargs="+", help="task vector files")
        if name == "disentangle":
            sub.add_argument("--grid", type=int, default=15, help="points per axis")
            sub.add_argument("--range", type=float, default=2.0, help="alphas span [-range, range]")
            sub.add_argument("--out", required=True, help="folder for the heatmap PNG and results.json")
        else:
            sub.add_argument("--alphas", type=int, default=21, help="points of the alpha grid on [0, 1]")
            sub.add_argument("--out", help="run folder whose results.json gets the result")
        sub.add_argument("--max-batches", type=int, help="evaluate on the first N batches of each split only")

    report = commands.add_parser("report", help="the paper's tables for a run folder's results.json")
    report.add_argument("run_dir", help="a folder with results.json (tools/reproduce_task_arithmetic.py --out)")
    return parser


def _print(command: str, result: Any) -> None:
    if command == "params":
        print(f"{result['config']}: {result['backbone']}; this config's mode {result['mode']} trains rule {result['rule']}")
        print(f"{'rule':<18}{'tensors':>8}{'trainable':>14}{'total':>14}{'fraction':>10}")
        for row in result["rows"]:
            print(f"{row['rule']:<18}{row['tensors']:>8}{row['trainable']:>14,}{row['total']:>14,}{row['fraction']:>10.2%}"
                  + (f"  ({row['note']})" if row["note"] else ""))
    elif command == "build":
        print("\n".join(result["vectors"]))
    elif command == "add":
        print(f"mode {result['mode']}: alpha {result['alpha']:.2f} (chosen on {result['select_split']})")
        print(f"{'task':<12}{'single':>8}{'added':>8}{'normalised':>12}")
        for task, accuracy in result["per_task"].items():
            print(f"{task:<12}{result['single'][task]['test']:>8.3f}{accuracy:>8.3f}{result['per_task_normalized'][task]:>12.3f}")
        print(f"{'mean':<12}{'':>8}{result['absolute']:>8.3f}{result['normalized']:>12.3f}")
    elif command == "negate":
        print(f"negate {result['target']} (control {result['control']}, threshold {result['threshold']}): alpha "
              f"{result['alpha']:.2f}; target {result['pretrained_target_accuracy']:.3f} -> {result['target_accuracy']:.3f}, "
              f"control {result['pretrained_control_accuracy']:.3f} -> {result['control_accuracy']:.3f}")
    elif command == "disentangle":
        print(f"{result['tasks'][0]} vs {result['tasks'][1]} on {result['split']} ({result['examples']} examples): "
              f"mean error {result['mean_error']:.4f}, max {result['max_error']:.4f}; heatmap {result['png']}")
    else:
        print(result, end="")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run one command, print; a `VfmError` becomes one line on stderr and exit status 2."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        command = {"params": _params, "build": _build, "add": _add, "negate": _negate, "disentangle": _disentangle,
                   "report": _report}[args.command]
        result = command(args)
    except VfmError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.json and not isinstance(result, str):
        print(json.dumps(result, indent=1))
    else:
        _print(args.command, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
