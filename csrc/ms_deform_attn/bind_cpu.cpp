// Python binding of the CPU kernels (module vfm.ops._ms_deform_attn_cpu, or the JIT-built equivalent).
#include <torch/extension.h>

#include "ms_deform_attn.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "vfm multi-scale deformable attention, CPU kernels";
  m.def("forward", &vfm::msda::forward_cpu, "forward (CPU)");
  m.def("backward", &vfm::msda::backward_cpu, "backward (CPU): grad_value, grad_sampling_locations, grad_attention_weights");
}
