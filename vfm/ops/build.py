"""Build settings and loaders for the native multi-scale deformable attention extensions.

Two extension modules exist, one per device kind, so a CPU-only machine never needs nvcc:
``vfm.ops._ms_deform_attn_cpu`` and ``vfm.ops._ms_deform_attn_cuda``. Each is taken prebuilt (from
``pip install -e . --no-build-isolation``, see setup.py) or else JIT-compiled from ``csrc/`` with
``torch.utils.cpp_extension.load`` and ninja. Both setup.py and the JIT path take their flags from here.

Environment variables:
    VFM_MSDA_JIT: "0" disables the JIT build (only a prebuilt extension is used).
    TORCH_EXTENSIONS_DIR: where JIT builds go; default the user's cache folder (``~/.cache/vfm/torch_extensions``,
        or under ``$XDG_CACHE_HOME``), not the source checkout.
    TORCH_CUDA_ARCH_LIST: CUDA architectures; default the local GPU's, else "8.0;9.0".
    CUDA_HOME: CUDA toolkit root; default the folder above ``nvcc`` on PATH.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shutil
import sys
import sysconfig
from pathlib import Path
from types import ModuleType

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
CSRC_DIR = REPO_ROOT / "csrc" / "ms_deform_attn"
KINDS = ("cpu", "cuda")
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0"
_log = logging.getLogger(__name__)


def module_name(kind: str) -> str:
    """Name of the extension module for `kind` ("cpu" or "cuda"), without the package prefix."""
    return f"_ms_deform_attn_{kind}"


def sources(kind: str) -> list[Path]:
    """Source files of the `kind` extension."""
    if kind == "cpu":
        return [CSRC_DIR / "bind_cpu.cpp", *sorted((CSRC_DIR / "cpu").glob("*.cpp"))]
    if kind == "cuda":
        return [CSRC_DIR / "bind_cuda.cpp", *sorted((CSRC_DIR / "cuda").glob("*.cu"))]
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def cxx_flags() -> list[str]:
    """Host compiler flags; -fopenmp is required or at::parallel_for silently runs serially; -g0 halves build time."""
    return ["-O3", "-g0", "-std=c++20", "-fopenmp"]


def nvcc_flags() -> list[str]:
    """nvcc flags (torch adds its -D__CUDA_NO_HALF_* defines and --expt-relaxed-constexpr)."""
    return ["-O3", "-std=c++20", "-lineinfo"]


def ld_flags() -> list[str]:
    """Linker flags; libgomp resolves to the copy torch already loaded (same soname)."""
    return ["-fopenmp"]


def find_cuda_home() -> str | None:
    """CUDA toolkit root: CUDA_HOME/CUDA_PATH, else the toolkit holding nvcc (which may be a wrapper script)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc is not None:
        candidates.append(Path(os.path.realpath(nvcc)).parent.parent)
    candidates.append(Path("/usr/local/cuda"))
    for root in candidates:
        if (root / "bin" / "nvcc").is_file() and (root / "include" / "cuda_runtime.h").is_file():
            return str(root)
    return None


def cuda_include_dirs() -> list[str]:
    """Headers of the nvidia wheels installed with torch (cusparse.h, cublas_v2.h), which torch's headers include."""
    site = Path(sysconfig.get_paths()["purelib"]) / "nvidia"
    return [str(p) for p in sorted(site.glob("cu[0-9]*/include")) if p.is_dir()]


def prepare_cuda_env() -> None:
    """Fill CUDA_HOME and TORCH_CUDA_ARCH_LIST when unset; without them torch cannot build on a GPU-less machine."""
    cuda_home = find_cuda_home()
    if cuda_home:
        os.environ.setdefault("CUDA_HOME", cuda_home)
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCH_LIST
    # cpp_extension fixes its CUDA_HOME guess at import (for a wrapper-script nvcc it picks /usr/local and the
    # link then fails with "cannot find -lcudart"), so correct it in case it was imported before CUDA_HOME was set.
    cpp_extension = import_cpp_extension()

    if cuda_home:
        cpp_extension.CUDA_HOME = cuda_home


def import_cpp_extension() -> ModuleType:
    """torch.utils.cpp_extension, imported without its "No CUDA runtime is found" warning on machines without a GPU.

    The warning is torch's guess of CUDA_HOME at import; vfm decides itself whether to build CUDA (a CPU build needs
    no CUDA runtime), so on a GPU-less machine it only alarms users.
    """
    cpp_logger = logging.getLogger("torch.utils.cpp_extension")
    previous = cpp_logger.level
    if not torch.cuda.is_available():
        cpp_logger.setLevel(logging.ERROR)
    try:
        import torch.utils.cpp_extension as cpp_extension
    finally:
        cpp_logger.setLevel(previous)
    return cpp_extension


def default_cache_root() -> Path:
    """The user's cache folder for JIT builds ($XDG_CACHE_HOME or ~/.cache, then vfm/torch_extensions)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vfm" / "torch_extensions"


def extensions_dir() -> Path:
    """JIT build root, keyed by Python and torch version so an upgraded torch never loads a stale binary."""
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or default_cache_root())
    tag = f"py{sys.version_info.major}{sys.version_info.minor}_torch{torch.__version__}".replace("+", "_")
    return root / tag


def import_prebuilt(kind: str) -> ModuleType:
    """Import the extension built by setup.py; raises ImportError when it is absent or older than csrc/."""
    name = f"vfm.ops.{module_name(kind)}"
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ImportError(f"{name} is not built")
    # In a source checkout a binary older than the sources would silently run stale kernels.
    built = Path(spec.origin).stat().st_mtime
    newer = [p.name for p in (*sources(kind), *CSRC_DIR.glob("*.h")) if p.is_file() and p.stat().st_mtime > built]
    if newer:
        raise ImportError(f"{spec.origin} is older than {', '.join(newer)}; rebuild it or let the JIT build run")
    return importlib.import_module(name)


def jit_build(kind: str, verbose: bool = False, build_directory: Path | None = None) -> ModuleType:
    """Compile (or load from the cache) the `kind` extension with torch.utils.cpp_extension.load and ninja."""
    files = sources(kind)
    if len(files) < 2 or not all(p.is_file() for p in files):
        raise RuntimeError(f"csrc sources not found under {CSRC_DIR}; the JIT build needs a source checkout")
    cuda_home = find_cuda_home()
    if cuda_home and not os.environ.get("CUDA_HOME"):
        os.environ["CUDA_HOME"] = cuda_home  # else cpp_extension logs a wrong guess at import, even for CPU builds
    cpp_extension = import_cpp_extension()
    load, verify_ninja_availability = cpp_extension.load, cpp_extension.verify_ninja_availability

    verify_ninja_availability()
    if kind == "cuda":
        prepare_cuda_env()
    build_dir = Path(build_directory) if build_directory else extensions_dir() / module_name(kind)
    build_dir.mkdir(parents=True, exist_ok=True)
    _log.info("vfm.ops: JIT-building (or loading the cached) %s in %s", module_name(kind), build_dir)
    return load(
        name=module_name(kind),
        sources=[str(p) for p in sources(kind)],
        extra_cflags=cxx_flags(),
        extra_cuda_cflags=nvcc_flags() if kind == "cuda" else None,
        extra_ldflags=ld_flags(),
        extra_include_paths=[str(CSRC_DIR), *(cuda_include_dirs() if kind == "cuda" else [])],
        build_directory=str(build_dir),
        with_cuda=kind == "cuda",
        verbose=verbose,
    )


def load_extension(kind: str, jit: bool | None = None, verbose: bool = False) -> tuple[ModuleType, str]:
    """Return the `kind` extension and where it came from ("prebuilt" or "jit"); raises RuntimeError if neither works."""
    try:
        return import_prebuilt(kind), "prebuilt"
    except ImportError as prebuilt_error:
        reason = f"no prebuilt {module_name(kind)} ({prebuilt_error})"
    if jit is None:
        jit = os.environ.get("VFM_MSDA_JIT", "1") != "0"
    if not jit:
        raise RuntimeError(f"{reason}; JIT build disabled by VFM_MSDA_JIT=0")
    try:
        return jit_build(kind, verbose=verbose), "jit"
    except Exception as jit_error:  # compiler, ninja or nvcc missing: report, never crash the caller
        raise RuntimeError(f"{reason}; JIT build failed: {type(jit_error).__name__}: {jit_error}") from jit_error


def cubin_architectures(library: str | Path) -> list[int]:
    """SM versions of the CUDA device binaries (cubins) embedded in a shared library, read from their ELF headers."""
    data = Path(library).read_bytes()
    em_cuda = 190
    found = set()
    position = data.find(b"\x7fELF", 1)  # offset 0 is the host library itself
    while position >= 0:
        if data[position + 4] == 2 and int.from_bytes(data[position + 18 : position + 20], "little") == em_cuda:
            flags = int.from_bytes(data[position + 48 : position + 52], "little")
            # CUDA >= 12.8 stores the SM in bits 8-15 of e_flags, older toolkits in bits 0-7
            candidates = [(flags >> 8) & 0xFF, flags & 0xFF]
            found.update(sm for sm in candidates if 30 <= sm <= 200)
        position = data.find(b"\x7fELF", position + 4)
    return sorted(found)
