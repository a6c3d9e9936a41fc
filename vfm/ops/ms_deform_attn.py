"""Multi-scale deformable attention: public function, input validation, dispatch and the torch.library op.

Implementations: ``reference`` (grid_sample, ms_deform_attn_reference.py), ``cpu`` and ``cuda`` (native
kernels in csrc/ms_deform_attn, loaded by build.py). The native kernels are registered as the custom ops
``vfm::ms_deform_attn`` and ``vfm::ms_deform_attn_backward`` with fake implementations, so torch.compile
traces through them without a graph break.

Environment variables:
    VFM_MSDA_IMPL: "auto" (default), "reference", "cpu" or "cuda"; the ``impl`` argument takes precedence.
    VFM_MSDA_VALIDATE: "0" skips the checks that read spatial_shapes/level_start_index values (on CUDA they
        cost a device-to-host copy); the kernels still never read out of bounds.
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from vfm.ops import build
from vfm.ops.ms_deform_attn_reference import multi_scale_deformable_attn_reference

IMPLS = ("auto", "reference", "cpu", "cuda")
# dtypes each native kernel is compiled for; other floating dtypes run in float32.
NATIVE_DTYPES = {
    "cpu": (torch.float32, torch.float64, torch.bfloat16),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}

_extensions: dict[str, ModuleType | RuntimeError] = {}
_warned_fallback: set[str] = set()


def native_extension(kind: str) -> ModuleType:
    """Load (once) the `kind` ("cpu" or "cuda") extension; raises RuntimeError saying why it is unavailable."""
    # No lock: a racing second load returns the same module (the JIT build holds its own file lock).
    if kind not in _extensions:
        try:
            _extensions[kind] = build.load_extension(kind)[0]
        except RuntimeError as error:
            _extensions[kind] = error
    loaded = _extensions[kind]
    if isinstance(loaded, RuntimeError):
        raise RuntimeError(str(loaded))  # a fresh exception: re-raising the cached one would grow its traceback
    return loaded


def native_available(kind: str) -> bool:
    """Whether the `kind` extension can be used (loading or JIT-building it on first call)."""
    try:
        native_extension(kind)
    except RuntimeError:
        return False
    return True


def _build_hint(kind: str) -> str:
    cuda = " (with nvcc and CUDA_HOME for the CUDA kernels)" if kind == "cuda" else ""
    return (
        f"build it with `pip install -e . --no-build-isolation`{cuda}, or install ninja and a C++ compiler for the "
        f"JIT build on first use; set VFM_MSDA_IMPL=reference to choose the slow reference and silence this warning"
    )


# Runs eagerly even while torch.compile traces (its string result is a constant), so loading the extension,
# reading the environment and warning never break the graph.
@torch.compiler.assume_constant_result
def resolve_impl(device_type: str, impl: str | None = None) -> str:
    """Resolve `impl` (argument, else VFM_MSDA_IMPL, else "auto") to "reference", "cpu" or "cuda" for a device type."""
    requested = impl if impl is not None else os.environ.get("VFM_MSDA_IMPL", "auto") or "auto"
    if requested not in IMPLS:
        source = "impl" if impl is not None else "VFM_MSDA_IMPL"
        raise ValueError(f"{source} must be one of {IMPLS}, got {requested!r}")
    if requested == "reference":
        return "reference"
    if requested in ("cpu", "cuda"):
        if device_type != requested:
            raise ValueError(f"impl {requested!r} needs value on a {requested} device, but value is on {device_type}")
        native_extension(requested)  # a forced implementation that cannot load is an error, not a fallback
        return requested
    if device_type in NATIVE_DTYPES:
        try:
            native_extension(device_type)
            return device_type
        except RuntimeError as error:
            reason = str(error)
    else:
        reason = f"no native kernel for device type {device_type!r}"
    if device_type not in _warned_fallback:
        _warned_fallback.add(device_type)
        warnings.warn(
            f"vfm.ops.multi_scale_deformable_attn: native {device_type} kernel unavailable ({reason}); falling back "
            f"to the grid_sample reference (slower, more memory). To fix, {_build_hint(device_type)}.",
            RuntimeWarning,
            stacklevel=4,
        )
    return "reference"


def _shape(tensor: Tensor) -> str:
    return str(tuple(tensor.shape))


def validate_inputs(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    check_values: bool = True,
) -> None:
    """Raise ValueError naming the offending tensor, its shape and the expected shape."""
    named = {
        "value": value,
        "spatial_shapes": spatial_shapes,
        "level_start_index": level_start_index,
        "sampling_locations": sampling_locations,
        "attention_weights": attention_weights,
    }
    for name, tensor in named.items():
        if not isinstance(tensor, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if value.dim() != 4:
        raise ValueError(f"value must have shape (N, S, M, D), got shape {_shape(value)}")
    batch, spatial, heads, _ = value.shape
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
        raise ValueError(f"spatial_shapes must have shape (L, 2) with rows (H, W), got shape {_shape(spatial_shapes)}")
    levels = spatial_shapes.shape[0]
    if level_start_index.shape != (levels,):
        raise ValueError(
            f"level_start_index must have shape (L,) = ({levels},) to match spatial_shapes {_shape(spatial_shapes)}, "
            f"got shape {_shape(level_start_index)}"
        )
    expected_loc = f"(N, Lq, M, L, P, 2) = ({batch}, Lq, {heads}, {levels}, P, 2)"
    loc_shape = tuple(sampling_locations.shape)
    if len(loc_shape) != 6 or loc_shape[0] != batch or loc_shape[2] != heads or loc_shape[3:4] != (levels,):
        raise ValueError(f"sampling_locations must have shape {expected_loc}, got shape {loc_shape}")
    if loc_shape[5] != 2:
        raise ValueError(f"sampling_locations must have shape {expected_loc} with (x, y) last, got shape {loc_shape}")
    if tuple(attention_weights.shape) != loc_shape[:5]:
        raise ValueError(
            f"attention_weights must have shape (N, Lq, M, L, P) = {loc_shape[:5]} to match sampling_locations, "
            f"got shape {_shape(attention_weights)}"
        )
    for name in ("value", "sampling_locations", "attention_weights"):
        if not named[name].is_floating_point():
            raise ValueError(
                f"{name} must be a floating-point tensor, got dtype {named[name].dtype} (shape {_shape(named[name])})"
            )
    for name in ("spatial_shapes", "level_start_index"):
        tensor = named[name]
        if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
            raise ValueError(
                f"{name} must be an integer tensor (int64), got dtype {tensor.dtype} (shape {_shape(tensor)})"
            )
    for name, tensor in named.items():
        if tensor.device != value.device:
            raise ValueError(f"{name} (shape {_shape(tensor)}) is on {tensor.device}, but value is on {value.device}")
    if check_values:
        _validate_levels(spatial, spatial_shapes, level_start_index)


def _validate_levels(spatial: int, spatial_shapes: Tensor, level_start_index: Tensor) -> None:
    shapes = spatial_shapes.tolist()
    starts = level_start_index.tolist()
    if any(h <= 0 or w <= 0 for h, w in shapes):
        raise ValueError(f"spatial_shapes {_shape(spatial_shapes)} must hold positive (H, W) rows, got {shapes}")
    sizes = [h * w for h, w in shapes]
    if sum(sizes) != spatial:
        raise ValueError(
            f"value has S = {spatial} positions (shape (N, S, M, D)), but spatial_shapes {_shape(spatial_shapes)} "
            f"= {shapes} sums to sum(H * W) = {sum(sizes)}"
        )
    expected = [sum(sizes[:i]) for i in range(len(sizes))]
    if starts != expected:
        raise ValueError(
            f"level_start_index {_shape(level_start_index)} must be {expected} (exclusive cumulative sum of H * W "
            f"over spatial_shapes {shapes}), got {starts}"
        )


@torch.library.custom_op("vfm::ms_deform_attn", mutates_args=())
def _native_forward(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Native forward; locations and weights must already be in value's accumulation dtype."""
    extension = native_extension(value.device.type)
    return extension.forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


@_native_forward.register_fake
def _native_forward_fake(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    batch, _, heads, channels = value.shape
    return value.new_empty((batch, sampling_locations.shape[1], heads * channels))


@torch.library.custom_op("vfm::ms_deform_attn_backward", mutates_args=())
def _native_backward(
    grad_output: Tensor,
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Native backward: (grad_value, grad_sampling_locations, grad_attention_weights)."""
    extension = native_extension(value.device.type)
    grads = extension.backward(
        grad_output.contiguous(), value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
    return tuple(grads)


@_native_backward.register_fake
def _native_backward_fake(
    grad_output: Tensor,
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    return (
        value.new_empty(value.shape),
        sampling_locations.new_empty(sampling_locations.shape),
        attention_weights.new_empty(attention_weights.shape),
    )


def _setup_context(ctx: Any, inputs: tuple[Tensor, ...], output: Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None, None, Tensor, Tensor]:
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
    grad_value, grad_locations, grad_weights = _native_backward(
        grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
    return grad_value, None, None, grad_locations, grad_weights


_native_forward.register_autograd(_backward, setup_context=_setup_context)


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except (TypeError, RuntimeError):  # device types without autocast support
        return False


def multi_scale_deformable_attn(
    value: Tensor,  # (N, S, M, D)
    spatial_shapes: Tensor,  # (L, 2) int64 rows (H, W)
    level_start_index: Tensor,  # (L,) int64
    sampling_locations: Tensor,  # (N, Lq, M, L, P, 2) as (x, y) in [0, 1]
    attention_weights: Tensor,  # (N, Lq, M, L, P)
    im2col_step: int = 64,
    *,
    impl: str | None = None,
) -> Tensor:
    """Multi-scale deformable attention; returns (N, Lq, M * D) in value's dtype (float32 under autocast if upcast).

    Locations outside [0, 1] sample zeros, like grid_sample(align_corners=False, padding_mode="zeros").
    `im2col_step` is accepted for compatibility with the official op and ignored: no kernel needs batch chunks.
    `impl` forces "reference", "cpu" or "cuda"; default "auto" (native kernel, else the reference with a warning).
    """
    del im2col_step
    compiling = torch.compiler.is_compiling()
    check_values = not compiling and os.environ.get("VFM_MSDA_VALIDATE", "1") != "0"
    validate_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, check_values)
    chosen = resolve_impl(value.device.type, impl)
    if chosen == "reference":
        return multi_scale_deformable_attn_reference(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    # Kernels exist for NATIVE_DTYPES only: others (float16 on CPU) run in float32. Under autocast the float32
    # result is returned as is, as autocast does for its float32 ops; outside it, cast back to value's dtype.
    compute_dtype = value.dtype if value.dtype in NATIVE_DTYPES[chosen] else torch.float32
    coord_dtype = torch.float64 if compute_dtype == torch.float64 else torch.float32
    output = _native_forward(
        value.to(compute_dtype).contiguous(),
        spatial_shapes.to(torch.int64).contiguous(),
        level_start_index.to(torch.int64).contiguous(),
        sampling_locations.to(coord_dtype).contiguous(),
        attention_weights.to(coord_dtype).contiguous(),
    )
    if compute_dtype != value.dtype and not _autocast_enabled(value.device.type):
        output = output.to(value.dtype)
    return output
