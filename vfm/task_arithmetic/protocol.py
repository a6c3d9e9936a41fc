"""The whole task-arithmetic protocol on one machine: pre-train, fine-tune every task in every mode under one
schedule, build the task vectors, then single-task accuracy, addition, negation, disentanglement and kernel gap.

Each training run goes through the Trainer with its config dumped beside its weights (as tools/train.py does), so
every step can be redone by hand with tools/train.py and tools/task_arithmetic.py. A run whose model.safetensors
exists is reused, so an interrupted protocol continues where it stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vfm.task_arithmetic.evaluate import (
    Editor,
    default_alphas,
    disentanglement,
    kernel_gap,
    single_task,
    task_addition,
    task_negation,
)
from vfm.task_arithmetic.workflow import build_tasks, build_vectors, load_vectors, plot_disentanglement, update_results

logger = logging.getLogger("vfm.task_arithmetic")
CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "task_arithmetic"


def train_run(config: str | Path, overrides: Sequence[str], work_dir: Path) -> Path:
    """Train `config` with `overrides` into `work_dir` (reused when its model.safetensors exists); the weights."""
    from vfm.config import dump_config, load_config
    from vfm.engine.run_config import RunConfig
    from vfm.engine.trainer import Trainer

    weights = work_dir / "model.safetensors"
    if weights.is_file():
        logger.info("reusing %s", weights)
        return weights
    cfg = load_config(config, [*overrides, f"work_dir={work_dir}", "checkpoint.overwrite=true"], RunConfig)
    trainer = Trainer(cfg, work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, work_dir / "config.yaml")
    start = time.perf_counter()
    result = trainer.train()
    logger.info("%s: %.0f s, %s", work_dir.name, time.perf_counter() - start, result.get("val"))
    return weights


def run_protocol(out: str | Path, tasks: Sequence[str], modes: Sequence[str], control: str, pair: Sequence[str],
                 pretrain_steps: int, finetune_steps: int, grid: int = 15, grid_range: float = 2.0,
                 alphas: int = 21, threshold: float = 0.95, max_batches: int | None = None,
                 finetune_overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Run everything into `out`; returns results.json's content (also written there, with heatmap PNGs)."""
    out = Path(out)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    pretrained = train_run(CONFIGS / "pretrain_digits_vit.yaml", [f"train.max_steps={pretrain_steps}"], out / "pretrain")
    timings["pretrain_s"] = time.perf_counter() - start
    finetune_config = CONFIGS / "finetune_digits.yaml"
    common = [f"objective.pretrained={pretrained}", f"train.max_steps={finetune_steps}", *finetune_overrides]
    vector_files: dict[str, list[Path]] = {}
    for mode in modes:
        mode_start = time.perf_counter()
        finetuned = [train_run(finetune_config, [*common, f"objective.task={task}", f"objective.finetune.mode={mode}"],
                               out / "finetune" / f"{task}_{mode}") for task in tasks]
        timings[f"finetune_{mode}_s"] = time.perf_counter() - mode_start
        vector_files[mode] = build_vectors(pretrained, finetuned, out / "vectors")

    eval_start = time.perf_counter()
    encoder, theta0, task_data = build_tasks(finetune_config, [f"objective.pretrained={pretrained}"], [*tasks, control])
    results_path = out / "results.json"
    if results_path.is_file():
        results_path.unlink()  # evaluations are recomputed whole; a stale section must not survive
    for mode in modes:
        vectors = load_vectors(vector_files[mode])
        editor = Editor(encoder, theta0, vectors, task_data, linearized=mode == "linearized", max_batches=max_batches)
        single = single_task(editor)
        update_results(out, "single", mode, single)
        update_results(out, "addition", mode, task_addition(editor, single, default_alphas(alphas)))
        update_results(out, "negation", mode, [task_negation(editor, t, control, default_alphas(alphas), threshold)
                                               for t in tasks])
        pair_result = disentanglement(editor, pair[0], pair[1], default_alphas(grid, -grid_range, grid_range))
        update_results(out, "disentanglement", mode, pair_result)
        plot_disentanglement(pair_result, out / f"disentanglement_{mode}.png", f"{mode}: {pair[0]} + {pair[1]}")
        if mode != "linearized":
            posthoc = Editor(encoder, theta0, vectors, task_data, linearized=True, max_batches=max_batches)
            update_results(out, "kernel_gap", mode, kernel_gap(editor, posthoc))
        logger.info("evaluated %s", mode)
    timings["evaluation_s"] = time.perf_counter() - eval_start
    timings["total_s"] = time.perf_counter() - start
    update_results(out, "run", "settings", {"tasks": list(tasks), "modes": list(modes), "control": control,
                                            "pair": list(pair), "pretrain_steps": pretrain_steps,
                                            "finetune_steps": finetune_steps, "grid": grid, "grid_range": grid_range,
                                            "threshold": threshold, "max_batches": max_batches})
    update_results(out, "run", "timings", timings)
    from vfm.task_arithmetic.report import load_results

    return load_results(out)


__all__ = ["run_protocol", "train_run"]
