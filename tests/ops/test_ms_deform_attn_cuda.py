"""The CUDA kernels against the reference; runs only where a GPU exists (tests/ops/test_ms_deform_attn_cpu.py
states the tolerance rationale; float16 adds 1e-2 for its 11-bit mantissa)."""

import os

import pytest
import torch

from vfm.ops import MultiScaleDeformableAttention, multi_scale_deformable_attn
from vfm.ops.ms_deform_attn import native_extension
from vfm.ops.ms_deform_attn_reference import multi_scale_deformable_attn_reference
from vfm.ops.ms_deform_attn_testing import random_inputs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CASES = [
    ([(6, 5), (3, 3), (1, 1)], 2, 3, 5, 7, 4),
    ([(1, 1)], 1, 1, 1, 3, 1),
    ([(8, 8), (4, 4), (2, 2), (1, 1)], 3, 2, 32, 11, 4),
    ([(2, 7), (5, 1), (3, 4)], 65, 4, 7, 2, 2),  # batch not divisible by any im2col step
    ([(8, 6), (4, 3)], 1, 1, 1030, 5, 3),  # D > 1024, not a multiple of 32
]
TOLERANCES = [
    (torch.float64, 1e-10, 0),
    (torch.float32, 1e-5, 1e-5),
    (torch.float16, 1e-2, 1e-2),
    (torch.bfloat16, 2e-2, 1e-2),
]


@pytest.fixture(scope="module", autouse=True)
def cuda_extension():
    try:
        return native_extension("cuda")
    except RuntimeError as error:
        if os.environ.get("VFM_REQUIRE_EXT") == "1":
            pytest.fail(f"VFM_REQUIRE_EXT=1 but the CUDA extension is missing: {error}")
        pytest.skip(f"CUDA extension unavailable: {error}")


def _double(inputs):
    return [t.double() if t.is_floating_point() else t for t in inputs]


@pytest.mark.parametrize("dtype,atol,rtol", TOLERANCES)
@pytest.mark.parametrize("case", CASES)
def test_forward_and_backward_match_reference(case, dtype, atol, rtol):
    level_shapes, batch, heads, channels, queries, points = case
    inputs = random_inputs(
        level_shapes, batch, heads, channels, queries, points, dtype=dtype, device="cuda", far_fraction=0.2
    )
    grad_output = torch.randn(batch, queries, heads * channels, device="cuda").to(dtype)
    results = []
    for fn, cast in (
        (lambda *a: multi_scale_deformable_attn(*a, impl="cuda"), lambda t: t),
        (multi_scale_deformable_attn_reference, lambda t: t.double()),
    ):
        leaves = [cast(t).clone().requires_grad_(True) if t.is_floating_point() else t for t in inputs]
        out = fn(*leaves)
        out.backward(cast(grad_output))
        results.append([out] + [leaves[i].grad for i in (0, 3, 4)])
    assert results[0][0].dtype == dtype
    for name, actual, expected in zip(("output", "value", "locations", "weights"), *results, strict=True):
        scale = expected.abs().max().clamp(min=1.0)
        torch.testing.assert_close(actual.double() / scale, expected / scale, atol=atol * 5, rtol=rtol, msg=name)


@pytest.mark.parametrize("channels", [30, 32, 64, 71, 1025])
def test_gradcheck_float64(channels):
    inputs = random_inputs(
        [(2, 2), (1, 1)], batch=1, heads=1, channels=channels, queries=2, points=2, device="cuda", far_fraction=0.2
    )
    value, shapes, starts, locations, weights = [t.requires_grad_(t.is_floating_point()) for t in inputs]
    assert torch.autograd.gradcheck(
        lambda v, loc, w: multi_scale_deformable_attn(v, shapes, starts, loc, w, impl="cuda"),
        (value, locations, weights),
        nondet_tol=1e-12,  # atomicAdd order
    )


def test_module_under_autocast_and_compile():
    torch.manual_seed(0)
    module = MultiScaleDeformableAttention(64, 8, 3, 4, batch_first=True).cuda()
    shapes = torch.tensor([[16, 16], [8, 8], [4, 4]], device="cuda")
    query = torch.randn(2, 50, 64, device="cuda")
    value = torch.randn(2, 336, 64, device="cuda")
    reference = torch.rand(2, 50, 3, 2, device="cuda")
    expected = module(query, reference, value, shapes)
    compiled = torch.compile(module, fullgraph=True)
    torch.testing.assert_close(compiled(query, reference, value, shapes), expected, rtol=1e-5, atol=1e-5)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low = module(query, reference, value, shapes)
    torch.testing.assert_close(low.float(), expected, rtol=5e-2, atol=5e-2)
