"""Distributed strategies on 2 CPU ranks (gloo) against a one-process reference on the same global batch.

Each strategy trains tests/engine/strategy_worker.py's TinyNet with SGD+momentum (not Adam: Adam's
update hides a gradient that is x world_size, PyTorch #162338). Tolerances, measured max |diff|
in brackets: fp32 weights rtol 1e-5, atol 1e-6 [3e-8 for ddp, fsdp, deepspeed 1/2/3]; FSDP2 bf16
compute vs the fp32 reference atol 2e-3 [3.2e-4]; gradient norms rtol 1e-5; resume at the same
world size vs an uninterrupted run: bit-exact [0.0]; FSDP2 resumed on 1 rank: fp32 tolerance [3e-8].

Three launches amortise process start-up: A (2 ranks) trains every parity case and saves mid-way,
B (2 ranks) resumes each checkpoint in new processes, C (1 rank) checks world-size changes: FSDP2
(DCP) reshards, DeepSpeed refuses with a clear message. DeepSpeed's first run compiles a comm op
(about 80 s, cached under TORCH_EXTENSIONS_DIR).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from vfm.engine.strategies import build_strategy
from vfm.engine.strategies.fsdp import find_blocks
from vfm.errors import CheckpointError, ConfigError

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("strategy_worker.py")
FP32 = {"rtol": 1e-5, "atol": 1e-6}
BF16 = {"rtol": 0.0, "atol": 2e-3}

_spec = importlib.util.spec_from_file_location("strategy_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None

# name -> case; save_at marks the cases whose checkpoint launch B resumes.
PARITY_CASES: dict[str, dict[str, Any]] = {
    "ddp_a1": {"strategy": "ddp", "steps": 3},
    "ddp_a2_clip": {"strategy": "ddp", "steps": 4, "accum": 2, "clip": 0.5, "save_at": 2},
    "fsdp_a1": {"strategy": "fsdp", "steps": 3},
    "fsdp_a2_clip": {"strategy": "fsdp", "steps": 4, "accum": 2, "clip": 0.5, "save_at": 2},
    "fsdp_bf16": {"strategy": "fsdp", "steps": 3, "accum": 2, "precision": "bf16"},
    "ds1_a1": {"strategy": "deepspeed", "steps": 4, "options": {"zero_stage": 1}, "save_at": 2},
    "ds2_a2": {"strategy": "deepspeed", "steps": 4, "accum": 2, "options": {"zero_stage": 2}, "save_at": 2},
    "ds3_a2_clip": {"strategy": "deepspeed", "steps": 4, "accum": 2, "clip": 0.5, "options": {"zero_stage": 3},
                    "save_at": 2},
}


def _require_deepspeed() -> None:
    if HAS_DEEPSPEED:
        return
    if os.environ.get("VFM_REQUIRE_DEEPSPEED") == "1":
        pytest.fail("VFM_REQUIRE_DEEPSPEED=1 but deepspeed is not installed: pip install 'vfm[deepspeed]'")
    pytest.skip("deepspeed is not installed (pip install 'vfm[deepspeed]'; VFM_REQUIRE_DEEPSPEED=1 makes this fail)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(cases: list[dict[str, Any]], out_dir: Path, nproc: int) -> None:
    cases_file = out_dir / f"cases_{cases[0]['name']}.json"
    cases_file.write_text(json.dumps(cases))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions")),
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--nnodes", "1",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(WORKER), str(out_dir), str(cases_file)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    if result.returncode != 0:
        raise AssertionError(f"torchrun exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run launches A, B and C once for the module; returns the directory of `<case>.pt` results."""
    out_dir = tmp_path_factory.mktemp("strategies")
    names = [n for n, c in PARITY_CASES.items() if HAS_DEEPSPEED or c["strategy"] != "deepspeed"]
    parity, resume, reshard = [], [], []
    for name in names:
        case = {**PARITY_CASES[name], "name": name}
        if "save_at" in case:
            case["save_dir"] = str(out_dir / f"ckpt_{name}")
            base = {k: v for k, v in case.items() if k not in ("save_at", "save_dir")}
            resume.append({**base, "name": f"{name}_resumed", "resume": case["save_dir"]})
            if name in ("fsdp_a2_clip", "ds1_a1"):
                reshard.append({**base, "name": f"{name}_world1", "resume": case["save_dir"]})
        parity.append(case)
    _launch(parity, out_dir, nproc=2)
    _launch(resume, out_dir, nproc=2)
    _launch(reshard, out_dir, nproc=1)
    return out_dir


def _reference(name: str, tmp_path: Path) -> dict[str, Any]:
    """The one-process run of a case on the whole global batch (no process group)."""
    case = {k: v for k, v in PARITY_CASES[name].items() if k not in ("options", "save_at")}
    worker.run_case({**case, "name": "reference", "strategy": "single"}, tmp_path)
    return torch.load(tmp_path / "reference.pt", weights_only=True)


def _assert_close(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], tolerance: dict[str, float]) -> None:
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key].float(), expected[key].float(), **tolerance, msg=lambda m, k=key: f"{k}: {m}")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PARITY_CASES))
def test_parity_with_one_process(name: str, runs: Path, tmp_path: Path) -> None:
    if PARITY_CASES[name]["strategy"] == "deepspeed":
        _require_deepspeed()
    got, expected = torch.load(runs / f"{name}.pt", weights_only=True), _reference(name, tmp_path)
    tolerance = BF16 if PARITY_CASES[name].get("precision") == "bf16" else FP32
    _assert_close(got["weights"], expected["weights"], tolerance)
    # A gradient x world_size (gloo AVG summing) would show here before clipping hides it.
    torch.testing.assert_close(torch.tensor(got["norms"]), torch.tensor(expected["norms"]), rtol=1e-5, atol=0)
    # The weights actually moved, so the comparison is not vacuous.
    assert max((expected["weights"][k] - worker.initial_weights()[k]).abs().max() for k in expected["weights"]) > 1e-2
    # load_model_state_dict(full) then model_state_dict() gives the same full weights back.
    _assert_close(got["reloaded"], worker.initial_weights(), {"rtol": 0, "atol": 0})


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, c in PARITY_CASES.items() if "save_at" in c])
def test_resume_continues_like_an_uninterrupted_run(name: str, runs: Path) -> None:
    if PARITY_CASES[name]["strategy"] == "deepspeed":
        _require_deepspeed()
    exact = {"rtol": 0.0, "atol": 0.0}  # same ranks, same reduction order: CPU resumes bit for bit
    _assert_close(torch.load(runs / f"{name}_resumed.pt", weights_only=True)["weights"], torch.load(runs / f"{name}.pt", weights_only=True)["weights"], exact)


@pytest.mark.slow
def test_fsdp_checkpoint_reshards_to_another_world_size(runs: Path) -> None:
    resumed = torch.load(runs / "fsdp_a2_clip_world1.pt", weights_only=True)
    assert "load_error" not in resumed, resumed.get("load_error")
    _assert_close(resumed["weights"], torch.load(runs / "fsdp_a2_clip.pt", weights_only=True)["weights"], FP32)


@pytest.mark.slow
def test_deepspeed_checkpoint_refuses_another_world_size(runs: Path) -> None:
    _require_deepspeed()
    error = torch.load(runs / "ds1_a1_world1.pt", weights_only=True)["load_error"]
    assert error.startswith("CheckpointError") and "world size 2" in error and "world size 1" in error
    assert "ds_to_universal" in error


# ------------------------------------------------------------------------------ in-process, fast
def test_unknown_strategy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="dist.strategy: got 'zero', expected one of ddp, deepspeed, fsdp, single"):
        build_strategy("zero")


def test_ddp_and_fsdp_without_process_group_fail_clearly() -> None:
    for name in ("ddp", "fsdp"):
        with pytest.raises(ConfigError, match=f"dist.strategy={name}: no process group"):
            build_strategy(name)


def test_single_strategy_save_load_round_trip(tmp_path: Path) -> None:
    strategy = build_strategy("single")
    model, optimizer = strategy.wrap(worker.TinyNet(), lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9))
    inputs, targets = worker.global_batch(0)
    strategy.backward(torch.nn.functional.mse_loss(model(inputs), targets))
    strategy.optimizer_step(optimizer)
    strategy.save(tmp_path / "ckpt", {"step": 1}, model, optimizer)
    fresh, fresh_optimizer = strategy.wrap(worker.TinyNet(), lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9))
    assert strategy.load(tmp_path / "ckpt", fresh, fresh_optimizer) == {"step": 1}
    _assert_close(strategy.model_state_dict(fresh), strategy.model_state_dict(model), {"rtol": 0, "atol": 0})
    momentum = [s["momentum_buffer"] for s in fresh_optimizer.state_dict()["state"].values()]
    assert len(momentum) == len(list(model.parameters())) and all(m.abs().sum() > 0 for m in momentum)
    with pytest.raises(CheckpointError, match="written by the 'single' strategy, cannot resume with 'fsdp'"):
        strategy.name = "fsdp"
        strategy.load(tmp_path / "ckpt", fresh, fresh_optimizer)


def test_fsdp_shards_each_block_else_each_child() -> None:
    model = worker.TinyNet()
    assert find_blocks(model) == list(model.blocks)
    plain = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2))
    assert find_blocks(plain) == [plain[0], plain[2]]


def test_deepspeed_config_has_real_numbers_and_passthrough() -> None:
    _require_deepspeed()
    strategy = build_strategy("deepspeed", precision="bf16", grad_accum_steps=4, micro_batch_size=3, clip_grad_norm=1.0,
                              zero_stage=2, config={"zero_optimization": {"overlap_comm": False}})
    config = strategy.config
    assert (config["train_batch_size"], config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (12, 3, 4)
    assert config["gradient_clipping"] == 1.0 and config["bf16"] == {"enabled": True} and config["fp16"] == {"enabled": False}
    assert config["zero_optimization"] == {"stage": 2, "overlap_comm": False}
    with pytest.raises(ConfigError, match="train_batch_size=99 must equal micro batch x accumulation x world size = 12"):
        build_strategy("deepspeed", grad_accum_steps=4, micro_batch_size=3, config={"train_batch_size": 99})


def test_missing_deepspeed_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # makes `import deepspeed` raise ImportError
    with pytest.raises(ConfigError, match=r"pip install 'vfm\[deepspeed\]'"):
        build_strategy("deepspeed")
