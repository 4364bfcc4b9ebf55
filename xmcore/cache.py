"""The on-disk cache of frozen-encoder features.

A frozen encoder maps an item to the same features every time, so runs that share
an encoder and data -- a sweep over fusion strategies, a second seed -- read them
instead of encoding again.  An entry's key hashes everything the features depend on:

* the encoder component, its parameters and a hash of its weights (so a changed
  checkpoint file or architecture is a new key, whatever its path);
* the preprocessing (the preprocessor's description);
* the data: each item's fingerprint (a file's path, size and mtime; an in-memory
  image's pixels; a caption's text).

An entry is a folder of safetensors shards plus ``meta.json``, written last and
atomically, holding each shard's sha256.  A folder without a valid ``meta.json``, or
whose shards do not match it, is an interrupted or corrupted write: it is deleted and
rebuilt, never half-used.  An entry is written in a folder ``<key>.partial-<host>-<pid>`` renamed
into place when whole; one a killed writer left is removed by the next write of its key.  The cache
may be shared between machines (NFS): a pid is judged alive or dead only on its own host; another
host's partial folder is taken to be in use until it is older than ``ABANDONED_AFTER_S``.

The folder is ``cache.dir`` in the recipe (relative to the recipe's folder, or to the working
directory when typed on the command line), else ``$XMCORE_CACHE_DIR``, else
``~/.cache/xmcore/features``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from xmcore.io import file_sha256, write_json

SHARD_ROWS = 65536
# Another host's partial folder untouched this long is abandoned: no write of one entry takes a day.
ABANDONED_AFTER_S = 24 * 3600


def cache_dir(configured: str | None = None) -> Path:
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("XMCORE_CACHE_DIR"):
        return Path(os.environ["XMCORE_CACHE_DIR"]).expanduser()
    return Path.home() / ".cache" / "xmcore" / "features"


def _item_fingerprint(item: Any) -> bytes:
    fingerprint = getattr(item, "fingerprint", None)
    if callable(fingerprint):
        return fingerprint().encode()
    if isinstance(item, str):
        return item.encode()
    if hasattr(item, "tobytes") and hasattr(item, "size"):  # an in-memory PIL image
        return f"{item.mode}{item.size}".encode() + item.tobytes()
    return repr(item).encode()


def data_fingerprint(items: Sequence[Any]) -> str:
    h = hashlib.sha256()
    for item in items:
        h.update(_item_fingerprint(item))
        h.update(b"\0")
    return h.hexdigest()


def weights_fingerprint(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        if isinstance(tensor, torch.Tensor):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def feature_key(identity: dict[str, Any], encoder: torch.nn.Module, items: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    described = {
        **identity,
        "weights": weights_fingerprint(encoder),
        "preprocessing": repr(getattr(encoder, "preprocessor", None)),
        "data": data_fingerprint(items),
        "count": len(items),
    }
    key = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:32]
    return key, described


def read_entry(folder: Path, count: int) -> torch.Tensor | None:
    """The cached features, or ``None`` when the entry is missing, partial or corrupted (then removed)."""
    from safetensors.torch import load_file

    meta_path = folder / "meta.json"
    if not folder.is_dir():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        parts = []
        for shard in meta["shards"]:
            path = folder / shard["file"]
            if file_sha256(path) != shard["sha256"]:
                raise ValueError(f"{path} does not match its checksum")
            parts.append(load_file(str(path))["features"])
        features = torch.cat(parts)
        if len(features) != count or len(features) != meta["rows"]:
            raise ValueError("row count differs")
        return features
    except (OSError, ValueError, KeyError, json.JSONDecodeError, RuntimeError) as exc:
        print(f"note: feature cache entry {folder} is incomplete or damaged ({exc}); encoding again", file=sys.stderr)
        shutil.rmtree(folder, ignore_errors=True)
        return None


def write_entry(folder: Path, features: torch.Tensor, described: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    partial = folder.with_name(folder.name + f".partial-{_host()}-{os.getpid()}")
    remove_abandoned(folder)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    shards = []
    for n, start in enumerate(range(0, max(1, len(features)), SHARD_ROWS)):
        name = f"part-{n:04d}.safetensors"
        save_file({"features": features[start : start + SHARD_ROWS].contiguous()}, str(partial / name))
        shards.append({"file": name, "sha256": file_sha256(partial / name)})
    meta = {"rows": len(features), "dim": int(features.shape[1]), "shards": shards, "created": time.time(), **described}
    write_json(partial / "meta.json", meta)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)  # the entry appears whole, or not at all


def remove_abandoned(folder: Path) -> None:
    """Remove the partial folders (``<key>.partial-<host>-<pid>``) of an entry whose writers are gone: a
    process killed while writing leaves one, never renamed into place.  This host's are judged by their
    pid; another host's pid means nothing here, so its folder is left alone until it is older than
    ``ABANDONED_AFTER_S``.  An old-style ``<key>.partial-<pid>`` (xmcore before host names) is judged by
    its pid on this host, as it was then."""
    for partial in folder.parent.glob(f"{folder.name}.partial-*"):
        writer = partial.name[len(folder.name) + len(".partial-"):]
        host, _, pid = writer.rpartition("-")
        if not pid.isdigit():
            continue  # not a name write_entry makes
        if host in ("", _host()):
            abandoned = not _alive(int(pid))
        else:
            abandoned = time.time() - _last_touched(partial) > ABANDONED_AFTER_S
        if abandoned:
            shutil.rmtree(partial, ignore_errors=True)


def _host() -> str:
    """This machine's name as a partial folder carries it (no path separators)."""
    import re
    import socket

    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "unknown"


def _last_touched(folder: Path) -> float:
    """The newest modification time of a folder and the files in it (a writer adding shards touches it)."""
    try:
        return max([folder.stat().st_mtime, *(p.stat().st_mtime for p in folder.iterdir())])
    except OSError:  # removed meanwhile
        return time.time()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own earlier attempt: write_entry starts it afresh
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def cached_features(
    root: Path, identity: dict[str, Any], encoder: torch.nn.Module, items: Sequence[Any],
    compute: Callable[[], torch.Tensor],
) -> tuple[torch.Tensor, bool]:
    """Features from the cache, or computed and stored; also whether they came from the cache."""
    key, described = feature_key(identity, encoder, items)
    folder = root / key
    features = read_entry(folder, len(items))
    if features is not None:
        return features, True
    features = compute()
    write_entry(folder, features, described)
    return features, False


def list_entries(root: Path) -> list[dict[str, Any]]:
    out = []
    if not root.is_dir():
        return out
    for folder in sorted(root.iterdir()):
        meta_path = folder / "meta.json"
        if ".partial-" in folder.name or not meta_path.is_file():  # a write under way, or abandoned
            continue
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError:
            continue
        size = sum(p.stat().st_size for p in folder.iterdir())
        out.append({"key": folder.name, "encoder": meta.get("encoder"), "modality": meta.get("modality"),
                    "rows": meta.get("rows"), "dim": meta.get("dim"), "bytes": size, "created": meta.get("created")})
    return out


def clear(root: Path, keys: Sequence[str] = ()) -> int:
    """Remove every entry, or the entries ``keys`` name; a key with no entry is an error and nothing is removed."""
    import difflib

    from xmcore.errors import XmcoreError

    folders = [f for f in root.iterdir() if f.is_dir()] if root.is_dir() else []
    known = sorted({f.name.split(".partial-")[0] for f in folders})
    unknown = [k for k in dict.fromkeys(keys) if k not in known and k not in {f.name for f in folders}]
    if unknown:
        def problem(key: str) -> str:
            if not known:
                return f"cache clear: no entry '{key}' in {root}: the cache is empty"
            closest = difflib.get_close_matches(key, known, n=3, cutoff=0)
            return f"cache clear: no entry '{key}' in {root}; closest keys: {', '.join(closest)} (`xmcore cache ls` lists them all)"

        raise XmcoreError("\n".join(problem(k) for k in unknown))
    removed = 0
    for folder in folders:
        if not keys or folder.name in keys or folder.name.split(".partial-")[0] in keys:
            shutil.rmtree(folder)
            removed += 1
    return removed
