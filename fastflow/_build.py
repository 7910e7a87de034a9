"""Build settings of the ``fastflow._C`` extension, shared by setup.py and the JIT loader.

This module lives inside the package (and imports nothing from it), so an installed fastflow can
build its extension just in time from the sources installed beside it (``fastflow/csrc``, package
data; ``csrc/`` at the top of the checkout); setup.py loads it by path before fastflow is installed.

The C++ sources ``csrc/*.cpp`` (CPU op, operator schema, Python module stub) are always built when a
C++ compiler is found. The CUDA sources ``csrc/cuda/*`` (a torch-free kernel file for nvcc and its
ATen glue for the C++ compiler, which keeps the nvcc step to seconds) join them according to
``FASTFLOW_BUILD_CUDA``:

- ``"0"``: never;
- ``"1"``: always, with a ``RuntimeError`` naming what is missing if they cannot be built;
- unset or ``"auto"``: when torch is a CUDA build and the CUDA toolkit (nvcc) is found.

The toolkit is ``CUDA_HOME`` (or ``CUDA_PATH``) when set, otherwise the folder that the ``nvcc`` on
PATH reports as its own (a dry run of ``nvcc`` prints ``TOP=<toolkit>/bin/..``), which stays right
when that ``nvcc`` is a wrapper script in another folder, where torch's guess (the wrapper's grandparent
folder) is wrong, otherwise ``DEFAULT_CUDA_HOME`` (``/usr/local/cuda``, where most CUDA machines keep
the toolkit, often without nvcc on PATH) when it holds ``bin/nvcc``. The CUDA code needs only the
toolkit's own headers, so torch's CUDA headers that
include cuBLAS/cuSOLVER (and the pip ``nvidia/cu13/include`` folder they would need) stay out.
Without a visible GPU, ``TORCH_CUDA_ARCH_LIST`` defaults to ``DEFAULT_CUDA_ARCHS``.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess

DEFAULT_CUDA_ARCHS = "8.0;9.0"
DEFAULT_CUDA_HOME = "/usr/local/cuda"
# The files of csrc/ that the build reads, relative to it (installed with the package as data).
SOURCE_FILES = ["*.cpp", "*.h", "cuda/*.cpp", "cuda/*.cu", "cuda/*.h"]
# -g0: no debug info, a faster build. -fopenmp: at::parallel_for is an OpenMP pragma in a header
# (ATen's CPU parallel backend), so without the flag the batch runs on one thread; the module then
# needs libgomp.so.1, which resolves to the copy torch has already loaded (one OpenMP runtime).
# -std=c++20: the sources use C++20 (std::bit_cast, template lambdas); torch's extension builder
# defaulted to C++17 until 2026 (pytorch/pytorch#176659), so an older torch, such as the GPU
# machines' 2.11, may still; it leaves an explicit -std alone.
CXX_FLAGS = ["-O3", "-g0", "-std=c++20", "-ffp-contract=fast", "-fno-trapping-math", "-Wno-psabi", "-fopenmp"]
LINK_FLAGS = ["-fopenmp"]
NVCC_FLAGS = ["-O3", "--threads=0"]  # --threads=0: nvcc compiles the target architectures in parallel


def cxx_compiler() -> str | None:
    """Path of the C++ compiler torch's build would use (``$CXX`` or ``c++``), or None."""
    return shutil.which(os.environ.get("CXX", "c++"))


def _nvcc_toolkit(nvcc: str) -> str | None:
    """The toolkit folder that ``nvcc`` runs from, from the ``TOP=`` line of a dry run."""
    try:
        command = [nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^#\$ TOP=(.+)$", result.stdout + result.stderr, flags=re.MULTILINE)
    return os.path.realpath(match.group(1).strip()) if match else None


def cuda_toolkit() -> str | None:
    """Folder of the CUDA toolkit holding ``bin/nvcc`` and ``include/cuda_runtime.h``, or None."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if not home:
        nvcc = shutil.which("nvcc")
        home = _nvcc_toolkit(nvcc) if nvcc else None
    if not home and os.path.isfile(os.path.join(DEFAULT_CUDA_HOME, "bin", "nvcc")):
        home = DEFAULT_CUDA_HOME
    if not home:
        return None
    has_nvcc = os.path.isfile(os.path.join(home, "bin", "nvcc"))
    has_headers = bool(glob.glob(os.path.join(home, "include", "cuda_runtime.h"))) or bool(
        glob.glob(os.path.join(home, "targets", "*", "include", "cuda_runtime.h"))
    )
    return home if has_nvcc and has_headers else None


def _cuda_blocker(home: str | None) -> str | None:
    """Why the CUDA sources cannot be built here, or None if they can."""
    import torch

    if torch.version.cuda is None:
        return f"torch {torch.__version__} is not a CUDA build"
    if home is None:
        return "no CUDA toolkit found (set CUDA_HOME to the folder holding bin/nvcc, or put nvcc on PATH)"
    if cxx_compiler() is None:
        return "no C++ compiler found"
    return None


def build_cuda() -> tuple[bool, str | None]:
    """Whether to build the CUDA sources, and the toolkit folder to build them with."""
    mode = os.environ.get("FASTFLOW_BUILD_CUDA", "auto").strip().lower()
    if mode not in ("0", "1", "auto", ""):
        raise ValueError(f"FASTFLOW_BUILD_CUDA must be '0', '1' or 'auto', got {mode!r}")
    if mode == "0":
        return False, None
    home = cuda_toolkit()
    blocker = _cuda_blocker(home)
    if blocker is not None and mode == "1":
        raise RuntimeError(f"FASTFLOW_BUILD_CUDA=1 but the CUDA sources cannot be built: {blocker}")
    return blocker is None, home


def configure_cuda(home: str) -> None:
    """Point torch's extension builder at the toolkit ``home`` and pick the target architectures.

    ``torch.utils.cpp_extension`` reads ``CUDA_HOME`` once, when it is imported, so its module
    attribute is set as well as the environment variable (in case it was imported before).
    """
    os.environ["CUDA_HOME"] = home
    import torch
    from torch.utils import cpp_extension

    cpp_extension.CUDA_HOME = home
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and torch.cuda.device_count() == 0:
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS


def extension_kwargs(root: str) -> dict:
    """Settings of ``fastflow._C`` for sources under ``root``.

    Returns ``{"with_cuda": bool, "ext": {...}}`` where ``ext`` holds the keyword arguments of
    ``CppExtension``/``CUDAExtension`` (sources relative to ``root``); the sources are empty when no
    C++ compiler is found. Building CUDA also calls :func:`configure_cuda`.
    """
    if cxx_compiler() is None:
        return {"with_cuda": False, "ext": {"sources": []}}
    with_cuda, home = build_cuda()
    patterns = ["*.cpp", "cuda/*.cpp", "cuda/*.cu"] if with_cuda else ["*.cpp"]
    sources = sorted(s for p in patterns for s in glob.glob(os.path.join(root, "csrc", p)))
    compile_args = {"cxx": list(CXX_FLAGS)}
    if with_cuda:
        configure_cuda(home)
        compile_args["nvcc"] = list(NVCC_FLAGS)
    ext = {
        "sources": [os.path.relpath(s, root) for s in sources],
        "extra_compile_args": compile_args,
        "extra_link_args": list(LINK_FLAGS),
    }
    return {"with_cuda": with_cuda, "ext": ext}
