"""The package as pip builds it: offline, without build isolation or dependencies (how it goes into an
environment that has its own torch), with torch asked for as a range, and with everything the
just-in-time build of the extension needs inside the package (no checkout beside it)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_builds_offline_and_carries_what_the_package_needs(tmp_path):
    env = dict(os.environ, CXX=str(tmp_path / "no-compiler"))  # no C++ compiler: a pure wheel, in seconds
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    done = subprocess.run([*command, "-w", str(tmp_path), str(ROOT)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = tmp_path.glob("fastflow-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ("fastflow/_build.py", "fastflow/kernels/actnorm_conv1x1.py", "fastflow/configs/cifar10_wolf.json"):
        assert path in names
    sources = {
        p.relative_to(ROOT / "csrc").as_posix() for p in (ROOT / "csrc").rglob("*") if p.suffix in (".cpp", ".h", ".cu")
    }
    assert sources and {f"fastflow/csrc/{s}" for s in sources} <= names
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    torch_requirement = next(r for r in requires if r.startswith("torch") and not r.startswith("torchvision"))
    assert ">=" in torch_requirement and "==" not in torch_requirement, requires


def test_installed_package_finds_its_sources_and_settings():
    """The JIT build reads ``fastflow.csrc`` and ``fastflow._build``, not a checkout three folders up."""
    from fastflow.ops import _extension

    root = _extension.sources_root()
    assert root is not None and (Path(root) / "csrc" / "batched_slogdet.cpp").is_file()
    settings = _extension.build_module().extension_kwargs(root)
    assert any(s.endswith("batched_slogdet.cpp") for s in settings["ext"]["sources"])
