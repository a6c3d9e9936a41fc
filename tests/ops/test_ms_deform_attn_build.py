"""Build helpers of the native extensions: paths, flags, CUDA toolkit discovery, cubin inspection."""

from pathlib import Path

from vfm.ops import build


def test_sources_exist_for_both_kinds():
    for kind in build.KINDS:
        files = build.sources(kind)
        assert len(files) >= 2 and all(p.is_file() for p in files), files


def test_flags_enable_openmp_and_cxx20():
    # without -fopenmp, at::parallel_for compiles to a serial loop
    assert "-fopenmp" in build.cxx_flags() and "-std=c++20" in build.cxx_flags()
    assert "-std=c++20" in build.nvcc_flags()


def test_extensions_dir_defaults_inside_checkout_and_honours_env(monkeypatch):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    assert build.extensions_dir().is_relative_to(build.REPO_ROOT / ".cache" / "torch_extensions")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/tmp/somewhere")
    assert build.extensions_dir().parent == Path("/tmp/somewhere")


def test_cuda_home_prefers_environment(monkeypatch):
    monkeypatch.setenv("CUDA_HOME", "/opt/my-cuda")
    assert build.find_cuda_home() == "/opt/my-cuda"


def _elf_header(machine: int, flags: int) -> bytes:
    header = bytearray(64)
    header[:5] = b"\x7fELF\x02"
    header[18:20] = machine.to_bytes(2, "little")
    header[48:52] = flags.to_bytes(4, "little")
    return bytes(header)


def test_cubin_architectures_reads_embedded_elf_headers(tmp_path):
    library = tmp_path / "lib.so"
    host = _elf_header(62, 0)  # x86-64 host object, ignored
    library.write_bytes(host + b"pad" + _elf_header(190, 0x0A005004) + b"pad" + _elf_header(190, 0x0A005A04))
    assert build.cubin_architectures(library) == [80, 90]
