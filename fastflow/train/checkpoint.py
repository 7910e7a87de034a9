"""Checkpoint files: atomic writes, a checksum, and clear refusals.

File layout: one header line ``FASTFLOW-CHECKPOINT 1 <sha256 of the payload> <payload bytes>\\n``,
then the payload, a ``torch.save`` of a dict of tensors and plain Python values (loaded with
``weights_only=True``). A truncated or altered file fails the checksum and is refused with a
:class:`CheckpointError` that names the file.

Writes go to a temporary file in the same folder, are flushed and fsync-ed, then ``os.replace``-d over
the old file (and the folder is fsync-ed), so a crash at any point leaves either the old checkpoint or
the new one, never a mix. A process killed mid-write leaves its temporary file behind; training
removes such files at start-up (:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import sys
import uuid
from pathlib import Path
from typing import Any

import torch

MAGIC = b"FASTFLOW-CHECKPOINT"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, from an incompatible model, or that could not be written."""


# atomic_write's temporary files: ".<name>.<pid of the writer>.<8 hex digits>.tmp", beside <name>.
TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old content or the new, never a partial file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")  # same folder: same file system
    try:
        with open(tmp, "xb") as f:  # a new file, with the usual permissions (umask)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files of :func:`atomic_write` in ``folder`` whose writer is no longer
    running (a process killed mid-write leaves one as large as a checkpoint); print what was removed
    to stderr and return it. Files of a live process (e.g. a ``fastflow eval`` writing now) are kept."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        match = TEMPORARY.match(path.name)
        if match and path.is_file() and int(match["pid"]) != os.getpid() and not _alive(int(match["pid"])):
            size = path.stat().st_size
            path.unlink(missing_ok=True)
            removed.append(path)
            print(f"fastflow: removed {path} ({size / 2**20:.1f} MiB), left by a killed writer", file=sys.stderr)
    return removed


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Serialise ``state`` with a checksum header and write it atomically to ``path``.

    A failed write (full disk, no permission) raises :class:`CheckpointError` saying which file and
    that the previous one at ``path``, if any, is unchanged.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    header = b"%s %d %s %d\n" % (MAGIC, VERSION, hashlib.sha256(payload).hexdigest().encode(), len(payload))
    path = Path(path)
    had_one = path.is_file()
    try:
        atomic_write(path, header + payload)
    except OSError as err:
        reason = err.strerror or str(err)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            reason += f" ({(len(header) + len(payload)) / 2**20:.1f} MiB needed)"
        kept = f"the previous {path.name} is unchanged" if had_one else f"no {path.name} was written"
        raise CheckpointError(
            f"could not write {path}: {reason}; {kept}. Free some space (or fix the folder's permissions), "
            f"then continue with --resume"
        ) from err


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, verifying its checksum."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    raw = path.read_bytes()
    newline = raw.find(b"\n", 0, 200)
    fields = raw[:newline].split(b" ") if newline > 0 else []
    if len(fields) != 4 or fields[0] != MAGIC:
        raise CheckpointError(f"{path} is not a fastflow checkpoint (no {MAGIC.decode()} header)")
    if not (fields[1].isdigit() and fields[3].isdigit() and re.fullmatch(rb"[0-9a-f]{64}", fields[2])):
        header = raw[:newline].decode("ascii", "replace")
        raise CheckpointError(
            f"{path} has a malformed header {header!r}; expected '{MAGIC.decode()} <version> <sha256> <bytes>'"
        )
    if int(fields[1]) != VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {int(fields[1])}; this fastflow reads {VERSION}")
    payload = raw[newline + 1 :]
    if len(payload) != int(fields[3]):
        raise CheckpointError(
            f"{path} is truncated or corrupt: {len(payload)} bytes of payload, "
            f"{int(fields[3])} expected (was the writing process killed?)"
        )
    if hashlib.sha256(payload).hexdigest().encode() != fields[2]:
        raise CheckpointError(f"{path} is corrupt: its checksum does not match its content")
    return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)


def check_model_kind(state: dict[str, Any], kind: str, path: Path) -> None:
    """Refuse a checkpoint written by another kind of model (wolf / refined_glow / glow)."""
    found = state.get("kind")
    if found != kind:
        raise CheckpointError(
            f"{path} holds a {found!r} model, but the configuration asks for a {kind!r} model; "
            f"use the config.json saved beside that checkpoint, or another run folder"
        )


def load_model_state(model: torch.nn.Module, state: dict[str, Any], path: Path) -> None:
    """Load a checkpoint's weights into ``model``, with an error naming the file if they do not fit."""
    check_model_kind(state, model.kind, path)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(
            f"the weights in {path} do not fit this {model.kind} model (was it written with "
            f"another model config?): {err}"
        ) from None


def rng_state() -> dict[str, Any]:
    """The global random states (torch, CUDA, NumPy, Python) in a form ``weights_only`` loading accepts."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype("int64")),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
