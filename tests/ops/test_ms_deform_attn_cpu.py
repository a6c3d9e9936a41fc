"""The C++ CPU kernels against the grid_sample reference: forward, backward, gradcheck, determinism.

Tolerances: float64 to 1e-10 absolute; float32 to 1e-5; bfloat16 (value rounded to bfloat16, accumulated in
float32, output rounded once) to 2e-2 absolute + 1e-2 relative, all against the reference run in float64
on the same (rounded) inputs.
"""

import os
import random

import pytest
import torch

from vfm.ops import multi_scale_deformable_attn
from vfm.ops.ms_deform_attn import native_extension
from vfm.ops.ms_deform_attn_reference import multi_scale_deformable_attn_reference
from vfm.ops.ms_deform_attn_testing import random_inputs

REQUIRE_EXT = os.environ.get("VFM_REQUIRE_EXT") == "1"


def _cpu_extension_or_skip():
    try:
        return native_extension("cpu")
    except RuntimeError as error:
        if REQUIRE_EXT:
            pytest.fail(f"VFM_REQUIRE_EXT=1 but the CPU extension is missing: {error}")
        pytest.skip(f"CPU extension unavailable ({error}); set VFM_REQUIRE_EXT=1 to turn this into a failure")


@pytest.fixture(scope="module", autouse=True)
def cpu_extension():
    return _cpu_extension_or_skip()


def test_cpu_extension_is_built():
    """Fails in CI (VFM_REQUIRE_EXT=1) when neither the prebuilt nor the JIT-built extension loads."""
    extension = _cpu_extension_or_skip()
    assert callable(extension.forward) and callable(extension.backward)


def _as_float64(inputs):
    return [t.double() if t.is_floating_point() else t for t in inputs]


def _cpu(*inputs):
    return multi_scale_deformable_attn(*inputs, impl="cpu")


CASES = [
    # (level shapes, batch, heads, channels, queries, points)
    ([(6, 5), (3, 3), (1, 1)], 2, 3, 5, 7, 4),
    ([(1, 1)], 1, 1, 1, 3, 1),
    ([(8, 8), (4, 4), (2, 2), (1, 1)], 3, 2, 32, 11, 4),
    ([(2, 7), (5, 1), (3, 4)], 5, 4, 7, 2, 2),
    # one (batch, head) pair and enough work: with 2+ threads the backward splits queries into chunks that
    # scatter into private buffers (see query_chunks in ms_deform_attn_cpu.cpp)
    ([(8, 6), (4, 3)], 1, 1, 65, 256, 3),
]


@pytest.fixture(autouse=True)
def two_threads():
    """Same parallel decomposition on every machine (the chunked backward path needs more threads than pairs)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize(
    "dtype,atol,rtol", [(torch.float64, 1e-10, 0), (torch.float32, 1e-5, 1e-5), (torch.bfloat16, 2e-2, 1e-2)]
)
@pytest.mark.parametrize("case", CASES)
def test_forward_matches_reference(case, dtype, atol, rtol):
    level_shapes, batch, heads, channels, queries, points = case
    inputs = random_inputs(level_shapes, batch, heads, channels, queries, points, dtype=dtype, far_fraction=0.2)
    actual = _cpu(*inputs)
    assert actual.dtype == dtype and actual.shape == (batch, queries, heads * channels)
    expected = multi_scale_deformable_attn_reference(*_as_float64(inputs))
    assert expected.abs().max() > 0.1  # the comparison is not between zeros
    torch.testing.assert_close(actual.double(), expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("case", CASES)
def test_backward_matches_reference(case, dtype, atol):
    level_shapes, batch, heads, channels, queries, points = case
    inputs = random_inputs(level_shapes, batch, heads, channels, queries, points, dtype=dtype, far_fraction=0.2)
    grad_output = torch.randn(batch, queries, heads * channels, generator=torch.Generator().manual_seed(1))
    grads = []
    for fn, cast in ((_cpu, lambda t: t), (multi_scale_deformable_attn_reference, lambda t: t.double())):
        leaves = [cast(t).clone().requires_grad_(True) if t.is_floating_point() else t for t in inputs]
        fn(*leaves).backward(cast(grad_output.to(dtype)))
        grads.append([leaves[i].grad for i in (0, 3, 4)])
    for name, index, actual, expected in zip(
        ("value", "sampling_locations", "attention_weights"), (0, 3, 4), *grads, strict=True
    ):
        assert actual.dtype == inputs[index].dtype, name
        # location gradients scale with H and W, so compare them relative to their size
        scale = expected.abs().max().clamp(min=1.0)
        torch.testing.assert_close(actual.double() / scale, expected / scale, atol=atol, rtol=0, msg=name)


@pytest.mark.parametrize("seed", range(6))
def test_random_shapes_match_reference_in_float64(seed):
    rng = random.Random(seed)
    levels = rng.randint(1, 4)
    level_shapes = [(rng.randint(1, 9), rng.randint(1, 9)) for _ in range(levels - 1)] + [(1, 1)]
    rng.shuffle(level_shapes)
    batch, heads, channels = rng.randint(1, 3), rng.randint(1, 4), rng.randint(1, 40)
    queries, points = rng.randint(1, 20), rng.randint(1, 4)
    inputs = random_inputs(level_shapes, batch, heads, channels, queries, points, far_fraction=0.2, seed=seed)
    grad_output = torch.randn(batch, queries, heads * channels, dtype=torch.float64)
    results = []
    for fn in (_cpu, multi_scale_deformable_attn_reference):
        leaves = [t.clone().requires_grad_(True) if t.is_floating_point() else t for t in inputs]
        output = fn(*leaves)
        output.backward(grad_output)
        results.append([output] + [leaves[i].grad for i in (0, 3, 4)])
    for name, actual, expected in zip(("output", "value", "locations", "weights"), *results, strict=True):
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-10, msg=f"{name} for {level_shapes}")


@pytest.mark.parametrize("channels", [30, 32, 64, 71, 1025])
def test_gradcheck_float64(channels):
    inputs = random_inputs([(2, 2), (1, 1)], batch=1, heads=1, channels=channels, queries=2, points=2, far_fraction=0.2)
    value, shapes, starts, locations, weights = [t.requires_grad_(t.is_floating_point()) for t in inputs]
    assert torch.autograd.gradcheck(lambda v, loc, w: _cpu(v, shapes, starts, loc, w), (value, locations, weights))


def test_non_contiguous_inputs():
    value, shapes, starts, locations, weights = random_inputs([(5, 4), (2, 2)], batch=2, heads=3, channels=6, queries=4)
    value_nc = value.transpose(1, 2).contiguous().transpose(1, 2)  # same values, (N, S, M, D) view of (N, M, S, D)
    locations_nc = locations.flip(-1).contiguous().flip(-1)[..., :2]  # negative stride on the last dim
    weights_nc = torch.cat([weights, weights], dim=-1)[..., : weights.shape[-1]]
    shapes_nc = shapes.t().contiguous().t()
    assert not value_nc.is_contiguous() and not weights_nc.is_contiguous() and not shapes_nc.is_contiguous()
    expected = _cpu(value, shapes, starts, locations, weights)
    torch.testing.assert_close(_cpu(value_nc, shapes_nc, starts, locations_nc, weights_nc), expected, rtol=0, atol=0)


def test_backward_is_deterministic():
    inputs = random_inputs([(8, 8), (4, 4)], batch=1, heads=1, channels=48, queries=256, points=4, dtype=torch.float32)
    results = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_(t.is_floating_point()) for t in inputs]
        _cpu(*leaves).sum().backward()
        results.append(leaves[0].grad)
    assert torch.equal(results[0], results[1])


def test_im2col_step_and_odd_batch_are_irrelevant():
    inputs = random_inputs([(4, 4), (2, 2)], batch=65, heads=2, channels=3, queries=2, points=2)
    expected = multi_scale_deformable_attn_reference(*inputs)
    for step in (1, 2, 64):
        torch.testing.assert_close(multi_scale_deformable_attn(*inputs, step, impl="cpu"), expected, rtol=0, atol=1e-10)
