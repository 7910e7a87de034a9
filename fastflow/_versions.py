"""The releases fastflow is tested with (README "Supported versions"), and the checks that read them.

The whole suite runs on the newest (the dev venv, ``make test``) and on the oldest (``make
test-oldest``) of each range; ``setup.py`` takes the floors for ``install_requires`` (loaded by path,
like ``_build.py``: this module imports nothing but the standard library). A torch outside its range
gets one warning when fastflow is imported (:func:`warn_if_untested_torch`).
"""

from __future__ import annotations

import re
import warnings

TORCH = ("2.11", "2.14")  # oldest and newest tested release series, both ends included
TORCHVISION_FLOOR = "0.26"  # what torch 2.11 pairs with
TRITON = ("3.6", "3.8")  # what those torch releases bring
PYTHON = ("3.11", "3.12")
NUMPY = ("2.2", "2.4")  # 2.2.6 with Triton 3.6 (make test-oldest), 2.4.6 with Triton 3.8 (make test)
# Triton 3.6's interpreter reads a scalar kernel argument (a one-element array) with int(), which numpy
# 2.4 refuses for arrays of one or more dimensions (2.3 warns); 3.8's takes it. Compiled kernels are not
# affected. Triton 3.7 is not tested and is held to the same numpy.
OLD_INTERPRETER_TRITON = (3, 8)
OLD_INTERPRETER_NUMPY_CAP = (2, 4)


def release(version: str) -> tuple[int, int]:
    """``"2.11.0+cu130"`` -> ``(2, 11)``: the release series of a version string."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        raise ValueError(f"not a version: {version!r}")
    return int(match.group(1)), int(match.group(2))


def untested_torch(version: str) -> str | None:
    """Why ``version`` of torch is outside the tested range, or None inside it."""
    low, high = (release(v) for v in TORCH)
    if low <= release(version) <= high:
        return None
    return f"fastflow is tested with torch {TORCH[0]} to {TORCH[1]}; this is torch {version}"


def warn_if_untested_torch(version: str) -> None:
    """One ``UserWarning`` for a torch outside the tested range (called once, at import)."""
    reason = untested_torch(version)
    if reason is not None:
        warnings.warn(f"{reason} (README 'Supported versions')", UserWarning, stacklevel=2)


def interpreter_conflict(triton_version: str, numpy_version: str) -> str | None:
    """Why Triton's interpreter cannot run fastflow's kernels with this numpy, or None when it can."""
    if release(triton_version) < OLD_INTERPRETER_TRITON and release(numpy_version) >= OLD_INTERPRETER_NUMPY_CAP:
        cap = ".".join(map(str, OLD_INTERPRETER_NUMPY_CAP))
        return (
            f"TRITON_INTERPRET=1 with Triton {triton_version} needs numpy < {cap} (its interpreter cannot "
            f"read a scalar kernel argument under numpy {numpy_version}); install 'numpy<{cap}' or Triton >= 3.8"
        )
    return None
