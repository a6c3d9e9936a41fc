"""Input validation, implementation dispatch, autocast, the torch.library op and torch.compile."""

import warnings

import pytest
import torch

import vfm.ops.ms_deform_attn as msda
from vfm.ops import multi_scale_deformable_attn
from vfm.ops.ms_deform_attn_reference import multi_scale_deformable_attn_reference
from vfm.ops.ms_deform_attn_testing import random_inputs

LEVELS = [(4, 3), (2, 2), (1, 1)]  # S = 17


def _inputs(**kwargs):
    kwargs = {"batch": 2, "heads": 2, "channels": 4, "queries": 5, "points": 3, **kwargs}
    return list(random_inputs(LEVELS, **kwargs))


def _has_native_cpu():
    return msda.native_available("cpu")


# ---- validation -----------------------------------------------------------------------------------------------

BAD_INPUTS = [
    # (argument index, replacement builder, words the message must contain)
    (0, lambda t: t[0], ["value", "(17, 2, 4)", "(N, S, M, D)"]),
    (0, lambda t: t.long(), ["value", "floating", "torch.int64"]),
    (1, lambda t: t[:, :1], ["spatial_shapes", "(3, 1)", "(L, 2)"]),
    (1, lambda t: t.float(), ["spatial_shapes", "integer", "torch.float32"]),
    (2, lambda t: t[:2], ["level_start_index", "(2,)", "(3,)"]),
    (2, lambda t: torch.tensor([0, 12, 15]), ["level_start_index", "[0, 12, 16]", "[0, 12, 15]"]),
    (1, lambda t: torch.tensor([[4, 3], [2, 2], [2, 1]]), ["value", "S = 17", "sum(H * W) = 18"]),
    (1, lambda t: torch.tensor([[4, 3], [2, 2], [0, 1]]), ["spatial_shapes", "positive"]),
    (
        3,
        lambda t: t[:, :, :1],
        ["sampling_locations", "(2, 5, 1, 3, 3, 2)", "(N, Lq, M, L, P, 2) = (2, Lq, 2, 3, P, 2)"],
    ),
    (3, lambda t: t[..., :1], ["sampling_locations", "(2, 5, 2, 3, 3, 1)", "(x, y)"]),
    (3, lambda t: t[:1], ["sampling_locations", "(1, 5, 2, 3, 3, 2)"]),
    (4, lambda t: t[..., :2], ["attention_weights", "(2, 5, 2, 3, 2)", "(2, 5, 2, 3, 3)"]),
    (4, lambda t: t > 0.5, ["attention_weights", "floating", "torch.bool"]),
    (4, lambda t: t.numpy(), ["attention_weights", "torch.Tensor", "ndarray"]),
    (3, lambda t: t.to("meta"), ["sampling_locations", "meta", "value is on cpu"]),
]


@pytest.mark.parametrize("index,mutate,words", BAD_INPUTS)
def test_bad_input_raises_value_error_naming_tensor_and_shapes(index, mutate, words):
    inputs = _inputs()
    inputs[index] = mutate(inputs[index])
    with pytest.raises(ValueError) as info:
        multi_scale_deformable_attn(*inputs, impl="reference")
    for word in words:
        assert word in str(info.value), f"{word!r} missing from: {info.value}"


def test_value_checks_can_be_skipped(monkeypatch):
    inputs = _inputs()
    inputs[2] = torch.tensor([0, 12, 15])
    monkeypatch.setenv("VFM_MSDA_VALIDATE", "0")
    multi_scale_deformable_attn(*inputs, impl="reference")  # no ValueError: the shape checks alone pass


# ---- dispatch -------------------------------------------------------------------------------------------------


def test_unknown_impl_is_rejected(monkeypatch):
    with pytest.raises(ValueError, match="impl must be one of"):
        multi_scale_deformable_attn(*_inputs(), impl="triton")
    monkeypatch.setenv("VFM_MSDA_IMPL", "fast")
    with pytest.raises(ValueError, match="VFM_MSDA_IMPL must be one of"):
        multi_scale_deformable_attn(*_inputs())


def test_impl_for_other_device_is_rejected():
    with pytest.raises(ValueError, match="impl 'cuda' needs value on a cuda device"):
        multi_scale_deformable_attn(*_inputs(), impl="cuda")


def test_env_var_forces_reference(monkeypatch):
    calls = []
    monkeypatch.setattr(msda, "multi_scale_deformable_attn_reference", lambda *a: calls.append(1) or a[0][:, :1])
    monkeypatch.setenv("VFM_MSDA_IMPL", "reference")
    multi_scale_deformable_attn(*_inputs())
    assert calls == [1]


def test_missing_extension_falls_back_once_with_build_hint(monkeypatch):
    monkeypatch.setattr(msda, "_extensions", {"cpu": RuntimeError("no prebuilt, JIT build failed: no compiler")})
    monkeypatch.setattr(msda, "_warned_fallback", set())
    monkeypatch.delenv("VFM_MSDA_IMPL", raising=False)
    inputs = _inputs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = multi_scale_deformable_attn(*inputs)
        multi_scale_deformable_attn(*inputs)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1
    assert "no compiler" in messages[0] and "pip install -e . --no-build-isolation" in messages[0]
    assert "VFM_MSDA_IMPL=reference" in messages[0]
    torch.testing.assert_close(first, multi_scale_deformable_attn_reference(*inputs), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="no compiler"):  # forcing the missing kernel is an error, not a fallback
        multi_scale_deformable_attn(*inputs, impl="cpu")


# ---- native op: dtypes, autocast, library op, compile ---------------------------------------------------------

native = pytest.mark.skipif(not _has_native_cpu(), reason="CPU extension unavailable (see test_ms_deform_attn_cpu)")


@native
def test_float16_runs_in_float32_and_returns_input_dtype():
    inputs = _inputs()
    half = [t.half() if t.is_floating_point() else t for t in inputs]
    output = multi_scale_deformable_attn(*half, impl="cpu")
    assert output.dtype == torch.float16
    expected = multi_scale_deformable_attn_reference(*[t.double() if t.is_floating_point() else t for t in half])
    torch.testing.assert_close(output.double(), expected, atol=2e-3, rtol=2e-3)


@native
def test_autocast_float16_on_cpu_runs_in_float32():
    inputs = _inputs(dtype=torch.float32)
    value = inputs[0].half().requires_grad_()
    with torch.autocast("cpu", dtype=torch.float16):
        output = multi_scale_deformable_attn(value, *inputs[1:], impl="cpu")
    assert output.dtype == torch.float32  # no float16 CPU kernel: the op ran in float32, as autocast fp32 ops do
    output.sum().backward()
    assert value.grad.dtype == torch.float16
    expected = multi_scale_deformable_attn_reference(
        value.detach().double(), *[t.double() if t.is_floating_point() else t for t in inputs[1:]]
    )
    torch.testing.assert_close(output.double(), expected, atol=1e-5, rtol=1e-5)


@native
def test_autocast_bfloat16_keeps_native_bfloat16_kernel():
    inputs = _inputs(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = multi_scale_deformable_attn(inputs[0].bfloat16(), *inputs[1:], impl="cpu")
    assert output.dtype == torch.bfloat16


@native
def test_low_precision_locations_are_read_in_float32():
    inputs = _inputs(dtype=torch.float32)
    mixed = multi_scale_deformable_attn(
        inputs[0], inputs[1], inputs[2], inputs[3].double(), inputs[4].double(), impl="cpu"
    )
    torch.testing.assert_close(mixed, multi_scale_deformable_attn(*inputs, impl="cpu"), rtol=0, atol=0)


@native
def test_library_op_passes_opcheck():
    value, shapes, starts, locations, weights = _inputs(dtype=torch.float32)
    value.requires_grad_()
    locations.requires_grad_()
    weights.requires_grad_()
    torch.library.opcheck(torch.ops.vfm.ms_deform_attn.default, (value, shapes, starts, locations, weights))


@native
def test_torch_compile_fullgraph_matches_eager():
    inputs = _inputs(dtype=torch.float32)
    spatial_shapes, level_start_index = inputs[1], inputs[2]

    class Block(torch.nn.Module):
        def forward(self, value, locations, weights):
            out = multi_scale_deformable_attn(value * 2, spatial_shapes, level_start_index, locations, weights)
            return out.relu()

    block = Block()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    eager_inputs = [inputs[0].requires_grad_(), inputs[3], inputs[4]]
    expected = block(*eager_inputs)
    actual = compiled(*eager_inputs)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    (grad_eager,) = torch.autograd.grad(expected.sum(), eager_inputs[0])
    (grad_compiled,) = torch.autograd.grad(actual.sum(), eager_inputs[0])
    torch.testing.assert_close(grad_compiled, grad_eager, rtol=0, atol=0)


@native
@pytest.mark.slow
def test_torch_compile_inductor_matches_eager():
    value, shapes, starts, locations, weights = _inputs(dtype=torch.float32)

    def block(value, locations, weights):
        return multi_scale_deformable_attn(value.sigmoid(), shapes, starts, locations, weights).square()

    expected = block(value, locations, weights)
    actual = torch.compile(block, fullgraph=True)(value, locations, weights)  # inductor, C++ codegen on CPU
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)
