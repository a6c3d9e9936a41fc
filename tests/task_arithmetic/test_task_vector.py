"""TaskVector: the algebra's identities, apply_to, integer buffers, heads, key/shape errors, safetensors files."""

from __future__ import annotations

import pytest
import torch
from ta_helpers import tiny_vit

from vfm.errors import CheckpointError, ConfigError
from vfm.task_arithmetic import TaskVector


def _pair(seed: int = 1) -> tuple[dict, dict]:
    pre = tiny_vit(num_classes=3, seed=0).state_dict()
    fine = {k: v + 0.01 * torch.randn(v.shape, generator=torch.Generator().manual_seed(seed + i))
            for i, (k, v) in enumerate(pre.items())}
    return pre, fine


def _close(a: TaskVector, b: TaskVector, atol: float = 1e-6) -> bool:
    return set(a) == set(b) and all(torch.allclose(a[k], b[k], atol=atol) for k in a)


def test_identities():
    pre, fine_a = _pair(1)
    _, fine_b = _pair(100)
    tau_a, tau_b = TaskVector.from_state_dicts(pre, fine_a), TaskVector.from_state_dicts(pre, fine_b)
    negated = -tau_a
    assert _close(-negated, tau_a, atol=0)
    assert _close((tau_a + tau_b) - tau_b, tau_a)
    assert _close(sum([tau_a, tau_b]), TaskVector.sum([tau_a, tau_b]), atol=0)
    assert _close(2 * tau_a, tau_a + tau_a) and _close(tau_a * 0.5 + tau_a * 0.5, tau_a)
    at_zero, at_one = tau_a.apply_to(pre, 0.0), tau_a.apply_to(pre, 1.0)
    assert all(torch.equal(at_zero[k], pre[k]) for k in pre)
    for key in tau_a:
        torch.testing.assert_close(at_one[key], fine_a[key], rtol=0, atol=2e-7)  # fp32 rounding of (f - p) + p
    assert "head.weight" not in tau_a and torch.equal(at_one["head.weight"], pre["head.weight"])  # heads never edited


def test_dot_norm_cosine():
    tau = TaskVector({"w": torch.tensor([3.0, 4.0]), "b": torch.tensor([0.0])})
    other = TaskVector({"w": torch.tensor([4.0, -3.0]), "b": torch.tensor([2.0])})
    assert tau.norm() == pytest.approx(5.0)
    assert tau.dot(other) == pytest.approx(0.0) and tau.cosine(other) == pytest.approx(0.0)
    assert tau.cosine(tau * 3) == pytest.approx(1.0) and tau.cosine(-tau) == pytest.approx(-1.0)
    assert tau.numel() == 3


def test_integer_buffers_are_untouched():
    pre = {"w": torch.zeros(2), "num_batches_tracked": torch.tensor(5)}
    fine = {"w": torch.ones(2), "num_batches_tracked": torch.tensor(9)}
    tau = TaskVector.from_state_dicts(pre, fine)
    assert list(tau) == ["w"]
    edited = tau.apply_to(pre, 3.0)
    assert edited["num_batches_tracked"] is pre["num_batches_tracked"] and edited["w"].tolist() == [3.0, 3.0]


def test_mismatched_keys_and_shapes_are_named():
    pre, fine = _pair()
    with pytest.raises(CheckpointError, match="missing in the fine-tuned weights: blocks.0.attn.qkv.weight"):
        TaskVector.from_state_dicts(pre, {k: v for k, v in fine.items() if k != "blocks.0.attn.qkv.weight"})
    with pytest.raises(CheckpointError, match=r"shape of pos_embed: \(1, 5, 32\) pretrained"):
        TaskVector.from_state_dicts(pre, {**fine, "pos_embed": torch.zeros(1, 6, 32)})
    tau = TaskVector.from_state_dicts(pre, fine, rule="attn_linear")
    assert set(tau) == {"blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight"}
    with pytest.raises(ConfigError, match="different keys"):
        tau + TaskVector.from_state_dicts(pre, fine)
    with pytest.raises(CheckpointError, match="keys are not in the state dict: blocks.0.attn.proj.weight"):
        tau.apply_to({k: v for k, v in pre.items() if k != "blocks.0.attn.proj.weight"})
    with pytest.raises(ConfigError, match="modes differ"):
        TaskVector({"w": torch.ones(1)}, mode="standard") + TaskVector({"w": torch.ones(1)}, mode="linearized")


def test_save_load_round_trip_records_rule_mode_task(tmp_path):
    pre, fine = _pair()
    tau = TaskVector.from_state_dicts(pre, fine, rule="attn_linear", mode="attn_only", task="rotated")
    path = tau.save(tmp_path / "v.safetensors")
    back = TaskVector.load(path)
    assert (back.rule, back.mode, back.task) == ("attn_linear", "attn_only", "rotated")
    assert _close(back, tau, atol=0)
    (tmp_path / "weights.safetensors").write_bytes((tmp_path / "v.safetensors").read_bytes()[:50])
    with pytest.raises(CheckpointError, match="weights.safetensors: not a readable safetensors file"):
        TaskVector.load(tmp_path / "weights.safetensors")
    from vfm.weights import save_safetensors

    save_safetensors(pre, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors: not a task vector"):
        TaskVector.load(tmp_path / "model.safetensors")
