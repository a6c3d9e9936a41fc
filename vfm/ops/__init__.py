"""Native operators: multi-scale deformable attention (reference, C++ CPU and CUDA kernels)."""

from vfm.ops.ms_deform_attn import multi_scale_deformable_attn
from vfm.ops.ms_deform_attn_module import MultiScaleDeformableAttention

__all__ = ["MultiScaleDeformableAttention", "multi_scale_deformable_attn"]
