"""Install fastflow: the Python package, its Triton kernels and its C++/CUDA extension.

The repository keeps the Triton kernels in the top-level folder ``kernels/``, the model configs in
``configs/`` and the extension's sources in ``csrc/``; they are installed as ``fastflow.kernels``,
``fastflow.configs`` and ``fastflow/csrc`` (package data, so that an installed fastflow can build its
extension just in time without the checkout). PyPI has an unrelated package called ``kernels``, so
nothing is ever installed under that top-level name.

fastflow installs beside the torch the user already has: ``install_requires`` takes a range (the oldest
versions it supports, README "Install"); the Makefile pins exact versions for the reproducible dev
venv. ``pip install --no-build-isolation --no-deps -e .`` installs it offline into any environment
with torch. The extension ``fastflow._C`` (batched log-determinants and inverses on CPU and CUDA,
and the C++ CPU kernels of the ``"cpu"`` backend) is built here when torch and a C++
compiler are present; its CUDA sources join the build when nvcc and a CUDA build of torch are found
(set ``FASTFLOW_BUILD_CUDA=0`` to skip them, ``=1`` to insist; the settings are ``fastflow/_build.py``).
Without a built extension it is compiled on first use (``fastflow/ops/_extension.py``).
"""

from __future__ import annotations

import importlib.util
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _load(name: str):
    """``fastflow/<name>.py``, loaded by path: fastflow itself is not importable before it is installed."""
    spec = importlib.util.spec_from_file_location(f"fastflow_{name}", os.path.join(ROOT, "fastflow", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUILD = _load("_build")
VERSIONS = _load("_versions")  # the tested ranges (README "Supported versions")


def extension_modules() -> tuple[list, dict]:
    """The ``fastflow._C`` extension and its build command; nothing without torch or a C++ compiler.

    The settings are read before ``torch.utils.cpp_extension`` is imported, so that it sees the CUDA
    toolkit they located.
    """
    try:
        import torch  # noqa: F401  (installed first; a bare sdist build without torch skips the op)
    except ImportError:
        return [], {}
    kwargs = BUILD.extension_kwargs(ROOT)
    if not kwargs["ext"]["sources"]:
        return [], {}
    from torch.utils import cpp_extension

    extension = cpp_extension.CUDAExtension if kwargs["with_cuda"] else cpp_extension.CppExtension
    return [extension("fastflow._C", **kwargs["ext"])], {
        "build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)
    }


ext_modules, cmdclass = extension_modules()

setup(
    name="fastflow",
    version="0.1.0",
    description="Fast, exact flow-based generative models (Wolf, refined Glow, Glow) with fused kernels",
    long_description=open(os.path.join(ROOT, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=f">={VERSIONS.PYTHON[0]}",
    packages=find_packages(include=["fastflow", "fastflow.*"])
    + ["fastflow.kernels", "fastflow.configs", "fastflow.csrc"],
    package_dir={"fastflow.kernels": "kernels", "fastflow.configs": "configs", "fastflow.csrc": "csrc"},
    package_data={"fastflow.configs": ["*.json"], "fastflow.csrc": BUILD.SOURCE_FILES},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    # Floors, not pins: fastflow goes into the user's environment beside their torch. Each floor is the
    # oldest release the whole suite runs on (`make test-oldest`: torch 2.11 with Triton 3.6); a newer
    # torch than the tested range installs, and says so once at import (fastflow/_versions.py).
    install_requires=[
        f"torch>={VERSIONS.TORCH[0]}",
        f"torchvision>={VERSIONS.TORCHVISION_FLOOR}",
        f"numpy>={VERSIONS.NUMPY[0]}",
        "ninja",
        "tqdm",
        "scikit-learn",
        "matplotlib",
    ],
    extras_require={
        "dev": ["pytest", "ruff==0.17.6", "normflows==1.7.3"],
        "normflows": ["normflows>=1.7"],
    },
    entry_points={"console_scripts": ["fastflow=fastflow.cli:main"]},
)
