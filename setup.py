"""Builds the optional native extensions in csrc/; all package metadata lives in pyproject.toml.

With build isolation (plain `pip install -e .`) torch is not importable here, so no extension is built and
vfm JIT-compiles the kernels on first use. `pip install -e . --no-build-isolation` builds:
  - vfm.ops._ms_deform_attn_cpu always;
  - vfm.ops._ms_deform_attn_cuda when nvcc and a CUDA build of torch are present, or VFM_FORCE_CUDA=1.
Environment: VFM_BUILD_EXT=0 builds nothing; VFM_BUILD_CUDA=0 skips the CUDA extension; CUDA_HOME and
TORCH_CUDA_ARCH_LIST as for any torch extension (defaults: the toolkit holding nvcc; the local GPU, else 8.0;9.0).
"""

import importlib.util
import os
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def _load_build_settings():
    # Load vfm/ops/build.py by path: importing the vfm package would pull in its dependencies at build time.
    spec = importlib.util.spec_from_file_location("_vfm_ops_build", ROOT / "vfm" / "ops" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _extensions():
    if os.environ.get("VFM_BUILD_EXT", "1") == "0":
        return [], {}
    try:
        import torch  # noqa: F401
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        print("vfm setup.py: torch not importable (build isolation?); skipping native extensions", file=sys.stderr)
        return [], {}
    build = _load_build_settings()

    def rel(paths):
        return [str(p.relative_to(ROOT)) for p in paths]

    include_dirs = [str(build.CSRC_DIR)]
    extensions = [
        CppExtension(
            name=f"vfm.ops.{build.module_name('cpu')}",
            sources=rel(build.sources("cpu")),
            include_dirs=include_dirs,
            extra_compile_args={"cxx": build.cxx_flags()},
            extra_link_args=build.ld_flags(),
        )
    ]
    force = os.environ.get("VFM_FORCE_CUDA", "0") == "1"
    skip = os.environ.get("VFM_BUILD_CUDA", "1") == "0"
    if not skip and (force or (torch.version.cuda is not None and build.find_cuda_home() is not None)):
        build.prepare_cuda_env()
        extensions.append(
            CUDAExtension(
                name=f"vfm.ops.{build.module_name('cuda')}",
                sources=rel(build.sources("cuda")),
                include_dirs=include_dirs + build.cuda_include_dirs(),
                extra_compile_args={"cxx": build.cxx_flags(), "nvcc": build.nvcc_flags()},
                extra_link_args=build.ld_flags(),
            )
        )
    print(f"vfm setup.py: building {[e.name for e in extensions]}", file=sys.stderr)
    return extensions, {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
