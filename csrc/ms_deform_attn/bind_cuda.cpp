// Python binding of the CUDA kernels (module vfm.ops._ms_deform_attn_cuda, or the JIT-built equivalent).
#include <torch/extension.h>

#include "ms_deform_attn.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "vfm multi-scale deformable attention, CUDA kernels";
  m.def("forward", &vfm::msda::forward_cuda, "forward (CUDA)");
  m.def("backward", &vfm::msda::backward_cuda, "backward (CUDA): grad_value, grad_sampling_locations, grad_attention_weights");
}
