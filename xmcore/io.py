"""Atomic file output: write a temporary file beside the target, then rename it over.

A write the file system refuses -- a full disk, a file-size limit, a read-only folder, no permission -- is a
:class:`WriteError` naming the file (the CLI prints one line and exits 2); nothing is left half-written."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import yaml

from xmcore.errors import XmcoreError

# What the file system says when the output's place, not xmcore, is at fault; and what to do about it.
_REFUSALS = {getattr(errno, name): hint for name, hint in (
    ("ENOSPC", "the disk is full: free some space or write elsewhere"),
    ("EDQUOT", "the disk quota is used up: free some space or write elsewhere"),  # not on every platform
    ("EFBIG", "the file would exceed the size this process may write (ulimit -f): raise the limit or write elsewhere"),
    ("EROFS", "the file system is read-only: choose a folder you can write to"),
    ("EACCES", "permission denied: choose a folder you can write to"),
    ("EPERM", "not permitted: choose a folder you can write to"),
) if hasattr(errno, name)}


class WriteError(XmcoreError):
    """An output could not be written because of where it goes (full, read-only, not permitted)."""


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    try:
        return _atomic_write_bytes(path, data)
    except OSError as exc:
        raise _refused(path, exc) from None


def _atomic_write_bytes(path: Path, data: bytes) -> Path:
    with _atomic_open(path) as f:
        f.write(data)
    return path


@contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file to write in pieces (for an output too large to hold in memory): a temporary file beside
    ``path``, renamed over it when the block ends without an error, removed otherwise.  A write the file system
    refuses is a :class:`WriteError` as for :func:`atomic_write_bytes`."""
    path = Path(path)
    try:
        with _atomic_open(path) as f:
            yield f
    except OSError as exc:
        raise _refused(path, exc) from None


@contextmanager
def _atomic_open(path: Path) -> Iterator[BinaryIO]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to a temporary file beside ``path``, flushed to disk, then renamed over it: the file is
    whole or absent.  A write the file system refuses is a :class:`WriteError` as for :func:`atomic_write_bytes`;
    torch's zip writer reports such a failure as a ``RuntimeError`` ("unexpected pos ..."), which counts too."""
    import torch

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _refused(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _refused(path, exc) from None
    except RuntimeError as exc:
        Path(tmp).unlink(missing_ok=True)
        if "PytorchStreamWriter" not in str(exc) and "inline_container" not in str(exc):
            raise
        raise WriteError(f"{path}: cannot write it (torch: {str(exc).splitlines()[0][:200]}); the disk may be full or "
                         "the file too large for this process (ulimit -f): free some space or write elsewhere") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _refused(path: Path, exc: OSError) -> Exception:
    if exc.errno not in _REFUSALS:
        return exc
    return WriteError(f"{path}: cannot write it ({exc.strerror or exc}); {_REFUSALS[exc.errno]}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def write_yaml(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's content, read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
