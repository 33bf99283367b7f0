"""Atomic writes and completion markers: no reader ever sees a half-written artifact."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .artifacts import COMPLETE_MARKER
from .errors import HarnessError

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def temp_path_for(path: Path) -> Iterator[Path]:
    """A temp file beside ``path`` that replaces it only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def staging_dir(final: Path) -> Iterator[Path]:
    """Build a directory beside ``final`` and move it into place only when the block succeeds.

    A crash leaves a ``.staging`` sibling that the next attempt removes, never a partial ``final``.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = final.with_name(f".{final.name}.staging")
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir()
    try:
        yield stage
        if final.exists():
            shutil.rmtree(final)
        os.replace(stage, final)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def read_marker(directory: Path) -> dict[str, Any] | None:
    marker = directory / COMPLETE_MARKER
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # an unreadable marker counts as absent: the step redoes its work
    return data if isinstance(data, dict) else None


def write_marker(directory: Path, step: str, files: list[Path] | None = None, **extra: Any) -> dict[str, Any]:
    """Record what the step produced, with checksums, as the last write of the step."""
    produced = {}
    for f in files or []:
        produced[str(f.relative_to(directory))] = {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
    data = {"step": step, "completedAt": datetime.now(UTC).isoformat(timespec="seconds"), "files": produced, **extra}
    atomic_write_json(directory / COMPLETE_MARKER, data)
    return data


def verify_marker_files(directory: Path) -> None:
    """Check the files a marker lists still exist with their size (cheap; checksums on demand)."""
    marker = read_marker(directory)
    if marker is None:
        raise HarnessError(f"{directory}: not complete (no {COMPLETE_MARKER}); run the step that makes it")
    for rel, info in marker.get("files", {}).items():
        f = directory / rel
        if not f.is_file():
            raise HarnessError(f"{f}: missing file listed in {directory / COMPLETE_MARKER}")
        if f.stat().st_size != info.get("bytes"):
            raise HarnessError(f"{f}: truncated or changed ({f.stat().st_size} bytes, expected {info.get('bytes')})")
