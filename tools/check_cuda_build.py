"""Compile the CUDA kernels of vfm.ops with nvcc, import the result and check the embedded architectures.

Runs without a GPU (CI): `python tools/check_cuda_build.py` (default TORCH_CUDA_ARCH_LIST="8.0;9.0").
Exit status 0 when the extension compiles, imports, exposes forward/backward and holds a cubin per requested SM.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from vfm.ops import build


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch-list", default=os.environ.get("TORCH_CUDA_ARCH_LIST") or "8.0;9.0")
    parser.add_argument("--build-dir", type=Path, default=None, help="default: TORCH_EXTENSIONS_DIR layout of build.py")
    parser.add_argument("--verbose", action="store_true", help="show the compiler command lines")
    args = parser.parse_args()

    os.environ["TORCH_CUDA_ARCH_LIST"] = args.arch_list
    build.prepare_cuda_env()
    print(f"CUDA_HOME={os.environ.get('CUDA_HOME')} TORCH_CUDA_ARCH_LIST={args.arch_list}", flush=True)
    start = time.perf_counter()
    try:
        module = build.jit_build("cuda", verbose=args.verbose, build_directory=args.build_dir)
    except Exception as error:  # report any build failure as one line plus the cause
        print(f"FAIL: CUDA extension did not build or import: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    missing_functions = [name for name in ("forward", "backward") if not callable(getattr(module, name, None))]
    wanted = sorted(
        {int(arch.replace("+PTX", "").replace(".", "")) for arch in args.arch_list.replace(",", ";").split(";") if arch}
    )
    found = build.cubin_architectures(module.__file__)
    missing_archs = [sm for sm in wanted if sm not in found]
    print(f"built and imported {module.__file__} in {elapsed:.0f} s; cubins for sm_{', sm_'.join(map(str, found))}")
    if missing_functions or missing_archs:
        print(f"FAIL: missing functions {missing_functions}, missing architectures {missing_archs}", file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
