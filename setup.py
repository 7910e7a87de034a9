"""Install fastflow: the Python package, its Triton kernels and its C++/CUDA extension.

The repository keeps the Triton kernels in the top-level folder ``kernels/``; they are installed as
``fastflow.kernels`` (PyPI has an unrelated package called ``kernels``, so nothing is ever installed
under that top-level name).

The extension ``fastflow._C`` (batched log-determinants, ``csrc/``) is built here when torch and a C++
compiler are present; its CUDA sources join the build when nvcc and a CUDA build of torch are found
(set ``FASTFLOW_BUILD_CUDA=0`` to skip them, ``=1`` to insist). Without a built extension the op is
compiled on first use by ``torch.utils.cpp_extension.load`` (see ``fastflow/ops/_extension.py``).
Install with ``pip install --no-build-isolation -e ".[dev]"`` after torch is installed.
"""

from __future__ import annotations

import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def extension_modules() -> tuple[list, dict]:
    """The ``fastflow._C`` extension and its build command; nothing without torch or a C++ compiler.

    The settings come from ``fastflow_build.py`` (shared with the JIT loader) before
    ``torch.utils.cpp_extension`` is imported, so that it sees the CUDA toolkit they located.
    """
    try:
        import torch  # noqa: F401  (installed first by the Makefile; a bare sdist build skips the op)
    except ImportError:
        return [], {}
    sys.path.insert(0, ROOT)
    from fastflow_build import extension_kwargs

    kwargs = extension_kwargs(ROOT)
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
    python_requires=">=3.10",
    packages=find_packages(include=["fastflow", "fastflow.*"]) + ["fastflow.kernels", "fastflow.configs"],
    package_dir={"fastflow.kernels": "kernels", "fastflow.configs": "configs"},
    package_data={"fastflow.configs": ["*.json"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "numpy",
        "ninja",
        "tqdm",
        "scikit-learn",
        "matplotlib",
    ],
    extras_require={
        "dev": ["pytest", "pytest-benchmark", "ruff==0.17.6", "normflows==1.7.3"],
        "normflows": ["normflows>=1.7"],
    },
    entry_points={"console_scripts": ["fastflow=fastflow.cli:main"]},
)
