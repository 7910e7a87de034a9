"""Loading of the C++/CUDA extension ``fastflow._C``, which registers the ``torch.ops.fastflow`` operators:
the batched log-determinant and inverse (CPU and CUDA) and the C++ CPU kernels of the ``"cpu"``
implementation (:mod:`fastflow.ops.cpu`: coupling, bias + ELU, patches).

:func:`load_library` tries, once per process:

1. the module that ``setup.py`` built (``import fastflow._C``);
2. a just-in-time build of the sources installed with the package (``fastflow.csrc``: ``csrc/`` of the
   checkout in an editable install, ``fastflow/csrc`` in a regular one) by
   ``torch.utils.cpp_extension.load`` with ninja, cached under torch's extension folder
   (``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``), with a message on stderr while
   it builds; the settings (CUDA or not, flags) are those of ``setup.py``, from ``fastflow._build``;
3. nothing: one ``RuntimeWarning`` saying why; the log-determinants fall back to torch.linalg and
   the other ops to their references.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import time
import warnings
from collections.abc import Callable
from types import ModuleType

import torch

from fastflow import _build

JIT_NAME = "fastflow_C"


def sources_root() -> str | None:
    """The folder holding ``csrc/`` (the extension's sources as installed), or None without them."""
    spec = importlib.util.find_spec("fastflow.csrc")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        if os.path.basename(os.path.normpath(folder)) == "csrc" and _has_sources(folder):
            return os.path.dirname(os.path.normpath(folder))
    return None


def _has_sources(csrc: str) -> bool:
    """Whether ``csrc`` holds C++ sources."""
    return any(name.endswith(".cpp") for name in os.listdir(csrc))


def _import_built() -> str | None:
    """Import the extension built by setup.py; None on success, else why it failed."""
    try:
        importlib.import_module("fastflow._C")
    except ImportError as exc:
        return f"fastflow._C does not import ({exc})"
    return None


def build_module() -> ModuleType | None:
    """The build settings (``fastflow._build``), or None when the package has no sources to build."""
    return _build if sources_root() is not None else None


def _build_just_in_time(import_error: str) -> str | None:
    """Compile and load ``csrc/`` with ninja, saying on stderr why (``import_error``: an install that
    built no extension, or one built against another torch); None on success, else why it failed."""
    root = sources_root()
    if root is None:
        return "no csrc/ sources installed with the package"
    settings = _build.extension_kwargs(root)
    sources = [os.path.join(root, s) for s in settings["ext"]["sources"]]
    if not sources:
        return "no C++ compiler found"
    flags = settings["ext"]["extra_compile_args"]
    kind = "C++/CUDA" if settings["with_cuda"] else "C++"
    print(
        f"fastflow: {import_error}; loading the {kind} extension with ninja (compiled on first use, up to "
        "a minute, then cached) ...",
        file=sys.stderr,
        flush=True,
    )
    from torch.utils.cpp_extension import load

    start = time.monotonic()
    try:
        load(
            name=JIT_NAME,
            sources=sources,
            extra_cflags=flags["cxx"],
            extra_cuda_cflags=flags.get("nvcc"),
            extra_ldflags=settings["ext"]["extra_link_args"],
            with_cuda=settings["with_cuda"],
            is_python_module=False,
        )
    except (ImportError, OSError, RuntimeError) as exc:  # cpp_extension reports compiler errors as RuntimeError
        return f"the just-in-time build failed: {exc}"
    print(f"fastflow: extension ready after {time.monotonic() - start:.0f} s.", file=sys.stderr, flush=True)
    return None


_loaded: bool | None = None  # the answer of load_library, once known (a plain global: torch.compile reads it)


def load_library() -> bool:
    """Make ``torch.ops.fastflow`` available; False (after one warning) when it cannot be."""
    global _loaded
    if _loaded is None:
        _loaded = _load()
    return _loaded


def _load() -> bool:
    import_error = _import_built()
    if import_error is None:
        return True
    build_error = _build_just_in_time(import_error)
    if build_error is None:
        return True
    warnings.warn(
        f"fastflow: the C++ extension is unavailable ({import_error}; {build_error}); "
        "batched_slogdet and batched_inverse fall back to torch.linalg in float64, and the cpu backend's "
        "C++ kernels to the plain-PyTorch references, which is slower",
        RuntimeWarning,
        stacklevel=2,
    )
    return False


def has_kernel(op: str, device_type: str) -> bool:
    """Whether the loaded extension has a kernel of ``fastflow::<op>`` for ``device_type``."""
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"fastflow::{op}", key)


_cpu_kernel_sets: dict[str, bool] = {}  # first op of a set -> loaded (a plain global: torch.compile reads it)


def cpu_kernels_loaded(fakes: dict[str, Callable]) -> bool:
    """Whether the extension is loaded with a CPU kernel for each ``fastflow::<op>`` in ``fakes``; the
    first time they are, their fake implementations (output shapes and dtypes, for torch.compile) are
    registered. Cached per set, keyed by its first op."""
    key = next(iter(fakes))
    loaded = _cpu_kernel_sets.get(key)
    if loaded is None:
        loaded = load_library() and all(has_kernel(op, "cpu") for op in fakes)
        if loaded:
            for op, fake in fakes.items():
                torch.library.register_fake(f"fastflow::{op}")(fake)
        _cpu_kernel_sets[key] = loaded
    return loaded
