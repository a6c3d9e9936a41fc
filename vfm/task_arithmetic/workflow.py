"""From files to results: task vectors from weight files, tasks from a fine-tuning config, results in a run folder.

What `tools/task_arithmetic.py` and `tools/reproduce_task_arithmetic.py` call; the computations are in
`vfm.task_arithmetic.evaluate`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from vfm.errors import CheckpointError, ConfigError
from vfm.task_arithmetic.evaluate import Editor, TaskData
from vfm.task_arithmetic.objective import LINEARIZED_MODES, MODE_RULES, check_finetune, encoder_weights
from vfm.task_arithmetic.task_vector import TaskVector

logger = logging.getLogger("vfm.task_arithmetic")
RESULTS = "results.json"


# ------------------------------------------------------------------------------------------------ vectors
def run_config_of(weights: str | Path) -> dict[str, Any] | None:
    """The training config a weights file came from: a vfm checkpoint's own, or config.yaml of its work dir."""
    from omegaconf import OmegaConf

    path = Path(weights)
    if path.suffix in (".pt", ".pth"):
        from vfm.weights import load_state_dict_file

        config = load_state_dict_file(path).get("config")
        if isinstance(config, dict):
            return config
    for folder in (path.parent, path.parent.parent):
        if (folder / "config.yaml").is_file():
            return OmegaConf.to_container(OmegaConf.load(folder / "config.yaml"), resolve=True)
    return None


def vector_from_files(pretrained: str | Path, finetuned: str | Path, rule: str | None = None, mode: str | None = None,
                      task: str | None = None) -> TaskVector:
    """The task vector finetuned - pretrained over encoder weights; task, mode and rule default to the fine-tuning
    run's config (objective.task, objective.finetune)."""
    from vfm.weights import extract_weights, load_state_dict_file

    config = run_config_of(finetuned) or {}
    objective = config.get("objective") or {}
    if objective.get("type") == "task_arithmetic":
        run_mode, run_rule = check_finetune(objective.get("finetune"), f"{finetuned}: objective.finetune")
        mode, task = mode or run_mode, task or objective.get("task")
        rule = rule or run_rule
    if mode is None:
        raise ConfigError(f"{finetuned}: no training config beside it records the fine-tuning mode; pass --mode")
    if mode not in MODE_RULES or mode == "posthoc_linearized":
        raise ConfigError(f"--mode: got {mode!r}, expected standard, attn_only or linearized")
    rule = rule or MODE_RULES[mode]
    pre = encoder_weights(extract_weights(load_state_dict_file(pretrained)))
    fine = encoder_weights(extract_weights(load_state_dict_file(finetuned)))
    try:
        vector = TaskVector.from_state_dicts(pre, fine, rule=rule, mode=mode, task=task)
    except CheckpointError as error:
        raise CheckpointError(f"{pretrained} -> {finetuned}: {error}") from error
    outside = [k for k in pre if k in fine and k not in vector and pre[k].is_floating_point()
               and not torch.equal(pre[k].float(), fine[k].float())]
    if outside and rule != "all":
        logger.warning("%s: %d tensors outside rule %s changed during fine-tuning (e.g. %s); they are left out",
                       finetuned, len(outside), rule, outside[0])
    return vector


def build_vectors(pretrained: str | Path, finetuned: Sequence[str | Path], out: str | Path, rule: str | None = None,
                  mode: str | None = None, tasks: Sequence[str] | None = None) -> list[Path]:
    """Write one task vector per fine-tuned file into `out` as <task>_<mode>.safetensors; returns the paths."""
    out = Path(out)
    if tasks is not None and len(tasks) != len(finetuned):
        raise ConfigError(f"--task: {len(tasks)} names for {len(finetuned)} fine-tuned files")
    for path in (pretrained, *finetuned):  # a missing file is named as such, before any mode lookup beside it
        if not Path(path).is_file():
            raise CheckpointError(f"{path}: checkpoint file not found")
    written = []
    for i, path in enumerate(finetuned):
        vector = vector_from_files(pretrained, path, rule, mode, tasks[i] if tasks else None)
        name = f"{vector.task or Path(path).parent.name}_{vector.mode}.safetensors"
        if any(p.name == name for p in written):
            raise ConfigError(f"{path}: a second vector named {name} (same task and mode); pass --task")
        written.append(vector.save(out / name))
        logger.info("%s: %s", out / name, vector)
    return written


def load_vectors(paths: Sequence[str | Path]) -> list[TaskVector]:
    """Task vectors from files; they must share one mode and name distinct tasks."""
    vectors = [TaskVector.load(p) for p in paths]
    modes = {v.mode for v in vectors}
    if len(modes) > 1:
        raise ConfigError(f"--vectors: the vectors were fine-tuned in different modes ({', '.join(map(str, modes))})")
    tasks = [v.task for v in vectors]
    if None in tasks or len(set(tasks)) != len(tasks):
        raise ConfigError(f"--vectors: each vector must record a distinct task, got {tasks}")
    return vectors


# ------------------------------------------------------------------------------------------------ tasks
def task_config(config: str | Path, overrides: Sequence[str], task: str) -> DictConfig:
    """The fine-tuning config with objective.task set to `task` (every node reading ${objective.task} follows)."""
    from vfm.config import load_config
    from vfm.engine.run_config import RunConfig

    cfg = load_config(config, [*overrides, f"objective.task={task}"], RunConfig)
    if cfg.objective.get("type") != "task_arithmetic":
        raise ConfigError(f"{config}: objective.type is {cfg.objective.get('type')!r}, expected task_arithmetic")
    # Heads and theta0 come from the pre-trained encoder whatever mode the config fine-tunes in.
    cfg.objective["finetune"] = {"mode": "standard", "rule": None}
    return cfg


def build_tasks(config: str | Path, overrides: Sequence[str], names: Sequence[str],
                device: torch.device | None = None) -> tuple[torch.nn.Module, dict[str, torch.Tensor], dict[str, TaskData]]:
    """The pre-trained encoder, its weights, and each task's frozen head with its val and test loaders."""
    from vfm.data.loader import build_loader
    from vfm.registry import OBJECTIVES, import_custom_modules

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder, tasks = None, {}
    for name in dict.fromkeys(names):
        cfg = task_config(config, overrides, name)
        import_custom_modules(cfg.custom_imports)
        objective = OBJECTIVES.build(cfg.objective, "objective").to(device)
        if encoder is None:
            encoder = objective.encoder
        if cfg.data.val is None:
            raise ConfigError(f"{config}: data.val is needed (the validation split that selects alpha)")
        splits = {"val": build_loader(cfg.data.val, "data.val", cfg.data, cfg.seed, train=False)}
        test = cfg.eval.sets.get("test")
        splits["test"] = build_loader(test.dataset, "eval.sets.test.dataset", cfg.data, cfg.seed, train=False,
                                      batch_size=test.batch_size) if test is not None else splits["val"]
        if test is None:
            logger.warning("%s: no eval.sets.test; reporting on data.val", config)
        tasks[name] = TaskData(name, objective.head, splits)
    assert encoder is not None
    pretrained = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    return encoder, pretrained, tasks


def make_editor(config: str | Path, overrides: Sequence[str], vectors: Sequence[TaskVector], linearized: bool | None = None,
                extra_tasks: Sequence[str] = (), max_batches: int | None = None) -> Editor:
    """An Editor over the vectors' tasks (and `extra_tasks`), linearised when the vectors' mode is (or when asked)."""
    if linearized is None:
        linearized = bool(vectors) and vectors[0].mode in LINEARIZED_MODES
    names = [v.task for v in vectors] + list(extra_tasks)
    encoder, pretrained, tasks = build_tasks(config, overrides, names)
    return Editor(encoder, pretrained, vectors, tasks, linearized, max_batches)


# ------------------------------------------------------------------------------------------------ results
def update_results(run_dir: str | Path, section: str, key: str, value: Any) -> Path:
    """Merge results[section][key] = value into run_dir/results.json."""
    from vfm.paths import check_output_folder

    run_dir = Path(run_dir)
    check_output_folder(run_dir, "--out")
    path = run_dir / RESULTS
    results = json.loads(path.read_text()) if path.is_file() else {}
    results.setdefault(section, {})[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    return path


def plot_disentanglement(result: dict[str, Any], path: str | Path, title: str | None = None) -> Path:
    """The disentanglement error matrix as a heatmap PNG (alpha_1 on x, alpha_2 on y)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = torch.tensor(result["matrix"]).T  # rows: alpha_2, columns: alpha_1
    alphas = result["alphas"]
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    # xi is a sum of two rates: [0, 2] on every heatmap, so heatmaps of different modes compare by colour.
    image = ax.imshow(matrix.numpy(), origin="lower", cmap="viridis", vmin=0.0, vmax=2.0,
                      extent=(alphas[0], alphas[-1], alphas[0], alphas[-1]), aspect="auto")
    first, second = result["tasks"]
    ax.set(xlabel=f"alpha ({first})", ylabel=f"alpha ({second})", title=title or f"disentanglement error {first}-{second}")
    fig.colorbar(image, ax=ax, label="xi (sum of two disagreement rates)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["RESULTS", "build_tasks", "build_vectors", "load_vectors", "make_editor", "plot_disentanglement",
           "run_config_of", "task_config", "update_results", "vector_from_files"]
