"""One file format for the embeddings of an evaluated split: what ``xmcore run`` and ``xmcore evaluate``
write (``embeddings.npz``), what ``xmcore evaluate --embeddings`` and ``xmcore report`` read.

An ``.npz`` of plain arrays (no pickles), for a split of two modalities A and B where every B item
belongs to one A item (a caption to its image)::

    modalities         ["A", "B"]     optional; without it the modalities are ("image", "text")
    A                  N x d          embeddings of the A items (e.g. "image")
    B                  M x d          embeddings of the B items (e.g. "text")
    B_to_A             M integers     the A row each B row belongs to (e.g. "text_to_image")
    A_labels, B_labels N and M        optional class labels (integers or strings): then an item is
                                      relevant to every item of the other modality with its label

A split of more modalities names them all (``["A", "B", "C"]``); each member modality after the first
has its rows and its ``C_to_A`` array (equal to ``B_to_A``: row j of B and of C is the same member in
two forms), and with labels every modality has its ``_labels``.

So a file written by hand with ``image``, ``text`` and ``text_to_image`` is this format.  Run
directories written before this format (``emb_A``, ``groups_A``, ``owner``) are still read.

Everything is checked before anything is computed: a file that cannot be evaluated is refused with
one line naming the array, the problem and the fix (:class:`EmbeddingsFileError`, exit status 2).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from xmcore.errors import XmcoreError

DEFAULT_MODALITIES = ("image", "text")


class EmbeddingsFileError(XmcoreError):
    """An embeddings file that cannot be evaluated; the message names the array and the fix."""


@dataclass
class EmbeddingsFile:
    split: Any  # xmcore.data.Split with range() items: the relevance structure
    embeddings: dict[str, np.ndarray]  # modality -> float32 rows


def save_embeddings(path: str | Path, embeddings: Mapping[str, Any], split) -> Path:
    """Write ``embeddings`` (modality -> rows, in the split's item order) and the split's relevance."""
    from xmcore.io import atomic_write_bytes

    first = split.modalities[0]
    arrays: dict[str, np.ndarray] = {"modalities": np.array(list(split.modalities))}
    for m in split.modalities:
        arrays[m] = np.asarray(embeddings[m], dtype=np.float32)
    for m in split.members:
        arrays[f"{m}_to_{first}"] = np.asarray(split.owner, dtype=np.int64)
    if split.relevance == "label":
        for m in split.modalities:
            arrays[f"{m}_labels"] = np.asarray(split.groups(m))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def load_embeddings(path: str | Path, what: str = "--embeddings") -> EmbeddingsFile:
    """Read and check an embeddings file; ``what`` starts every error message (the flag or file role)."""
    path = Path(path)

    def fail(message: str) -> EmbeddingsFileError:
        return EmbeddingsFileError(f"{what}: {path}: {message}")

    if not path.is_file():
        raise EmbeddingsFileError(f"{what}: no such file {path}")
    arrays = _read(path, fail)
    if "modalities" in arrays and any(k.startswith("emb_") for k in arrays):
        return _legacy(arrays, fail)
    names = _modalities(arrays, fail)
    first, second = names[0], names[1]
    owner_key = f"{second}_to_{first}"
    label_keys = (f"{first}_labels", f"{second}_labels")
    missing = [k for k in (first, second, owner_key) if k not in arrays]
    if missing:
        raise fail(
            f"has no array {', '.join(map(repr, missing))}; expected {first} (N x d), {second} (M x d), {owner_key} "
            f"(M integers), optionally {label_keys[0]} (N) and {label_keys[1]} (M); it has: {', '.join(arrays) or 'nothing'}"
        )
    emb = {m: _embedding_array(arrays[m], m, fail) for m in (first, second)}
    if emb[first].shape[1] != emb[second].shape[1]:
        raise fail(
            f"arrays '{first}' ({emb[first].shape[1]} columns) and '{second}' ({emb[second].shape[1]} columns) "
            "must have the same width: both embedded into one common space"
        )
    n, m = len(emb[first]), len(emb[second])
    owner = _owner_array(arrays[owner_key], owner_key, m, n, first, second, fail)
    present = [k for k in label_keys if k in arrays]
    if len(present) == 1:
        raise fail(f"has '{present[0]}' but no '{(set(label_keys) - set(present)).pop()}'; give both label arrays, or neither")
    labels = _labels(arrays, label_keys, (n, m), fail) if present else None
    _check_every_query_has_an_answer(n, owner, labels, (first, second), owner_key, label_keys, fail)
    split = _split(first, second, n, m, owner, labels)
    if len(names) > 2:
        split, emb = _more_members(arrays, names, split, emb, fail)
    return EmbeddingsFile(split, emb)


def _more_members(arrays, names, split, emb, fail):
    """The third and later modalities: rows aligned with the second's (same ``_to_`` array)."""
    from xmcore.data import Split

    first, second = names[0], names[1]
    owner_key = f"{second}_to_{first}"
    member_labels = split.member_labels
    for name in names[2:]:
        key = f"{name}_to_{first}"
        if name not in arrays or key not in arrays:
            raise fail(f"names modality '{name}' but has no array '{name}' or '{key}'; give both, or drop '{name}' "
                       "from 'modalities'")
        emb[name] = _embedding_array(arrays[name], name, fail)
        if emb[name].shape[1] != emb[first].shape[1]:
            raise fail(f"array '{name}' has {emb[name].shape[1]} columns, '{first}' {emb[first].shape[1]}: one common space")
        if arrays[key].shape != arrays[owner_key].shape or not np.array_equal(arrays[key], arrays[owner_key]):
            raise fail(f"array '{key}' differs from '{owner_key}': row j of every member modality must be the same "
                       "member (a caption as text and as speech); write the members in one order")
        if split.relevance == "label":
            label_key = f"{name}_labels"
            if label_key not in arrays:
                raise fail(f"has labels for '{first}' and '{second}' but no '{label_key}'; give every modality's labels, or none")
            theirs = np.asarray(arrays[label_key])
            if theirs.shape != (len(split.owner),) or not np.array_equal(theirs.astype(str), np.asarray(arrays[f"{second}_labels"]).astype(str)):
                raise fail(f"array '{label_key}' differs from '{second}_labels': aligned members have the same labels")
    items = {m: range(len(emb[m])) for m in names}
    return Split(tuple(names), items, split.owner, split.labels, split.relevance, member_labels), emb


def _read(path: Path, fail) -> dict[str, np.ndarray]:
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise fail(f"not a readable .npz file ({type(exc).__name__}: {exc}); write it with numpy.savez") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise fail("holds one array, not an .npz archive of named arrays; write it with numpy.savez(path, name=array, ...)")
    arrays = {}
    with npz:
        for key in npz.files:
            try:
                arrays[key] = npz[key]
            except ValueError:  # an object array, which allow_pickle=False refuses
                raise fail(f"array '{key}' holds Python objects (dtype=object); save numbers, or strings for labels") from None
            except (OSError, zipfile.BadZipFile, EOFError) as exc:
                raise fail(f"array '{key}' cannot be read ({type(exc).__name__}: {exc}); the file is damaged") from None
    return arrays


def _modalities(arrays: dict[str, np.ndarray], fail) -> tuple[str, ...]:
    if "modalities" not in arrays:
        return DEFAULT_MODALITIES
    names = arrays["modalities"]
    if (names.ndim != 1 or len(names) < 2 or names.dtype.kind not in "US" or len({str(x) for x in names}) != len(names)
            or not all(str(x) for x in names)):
        raise fail(f"array 'modalities' must hold two or more different names, e.g. ['image', 'text']; it holds {names.tolist()!r}")
    return tuple(str(x) for x in names)


def _embedding_array(a: np.ndarray, name: str, fail) -> np.ndarray:
    if a.ndim != 2:
        raise fail(f"array '{name}' has shape {a.shape}; expected rows x width (2-D), one row per {name} item")
    if a.dtype.kind not in "fiu":
        raise fail(f"array '{name}' holds {a.dtype}; expected numbers (float32 embeddings)")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise fail(f"array '{name}' is empty (shape {a.shape}); expected at least one row and one column")
    a = np.ascontiguousarray(a, dtype=np.float32)
    bad = ~np.isfinite(a).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise fail(
            f"array '{name}' has NaN or infinite values in {len(rows)} of {len(a)} rows (first: row "
            f"{', '.join(map(str, rows[:5]))}); a diverged model? re-embed, or drop those rows"
        )
    return a


def _owner_array(a: np.ndarray, key: str, m: int, n: int, first: str, second: str, fail) -> np.ndarray:
    if a.shape != (m,):
        raise fail(f"array '{key}' has shape {a.shape}; expected ({m},): for each {second} row, the {first} row it belongs to")
    if a.dtype.kind not in "iu":
        raise fail(f"array '{key}' holds {a.dtype}; expected integers: for each {second} row, the index of its {first} row")
    outside = (a < 0) | (a >= n)
    if outside.any():
        j = int(np.flatnonzero(outside)[0])
        raise fail(
            f"array '{key}' points outside the {n} {first} rows ({int(outside.sum())} values; first: "
            f"{second} row {j} -> {int(a[j])}); values must lie in [0, {n})"
        )
    return a.astype(np.int64)


def _labels(arrays, keys: tuple[str, str], sizes: tuple[int, int], fail) -> tuple[np.ndarray, np.ndarray]:
    out = []
    for key, size in zip(keys, sizes):
        a = arrays[key]
        if a.shape != (size,):
            raise fail(f"array '{key}' has shape {a.shape}; expected ({size},): one label per row")
        if a.dtype.kind not in "iuUSb":
            raise fail(f"array '{key}' holds {a.dtype}; expected class labels as integers or strings")
        out.append(a)
    kinds = [("text" if a.dtype.kind in "US" else "number") for a in out]
    if kinds[0] != kinds[1]:
        raise fail(f"'{keys[0]}' holds {kinds[0]}s and '{keys[1]}' {kinds[1]}s; give both labels the same kind")
    values = [a.astype(str) if kinds[0] == "text" else a.astype(np.int64) for a in out]
    classes, codes = np.unique(np.concatenate(values), return_inverse=True)
    return codes[: sizes[0]].astype(np.int64), codes[sizes[0]:].astype(np.int64), classes


def _check_every_query_has_an_answer(n: int, owner, labels, modalities, owner_key, label_keys, fail) -> None:
    first, second = modalities
    if labels is None:
        rows = np.setdiff1d(np.arange(n), owner)
        if len(rows):
            raise fail(
                f"array '{owner_key}': {len(rows)} of {n} {first} rows have no {second} row pointing at them (first: "
                f"row {', '.join(map(str, rows[:5]))}); every {first} needs at least one {second}: drop those {first} "
                f"rows, or give {label_keys[0]} and {label_keys[1]} to judge relevance by class"
            )
        return
    codes_a, codes_b, classes = labels
    for key, mine, theirs, me, other in ((label_keys[0], codes_a, codes_b, first, second),
                                         (label_keys[1], codes_b, codes_a, second, first)):
        rows = np.flatnonzero(~np.isin(mine, theirs))
        if len(rows):
            shown = ", ".join(f"row {r} ({classes[mine[r]]!s})" for r in rows[:3])
            raise fail(
                f"array '{key}': {len(rows)} {me} rows have a label that no {other} row has (first: {shown}); "
                "every query needs a relevant item: drop those rows or fix the labels"
            )


def _split(first: str, second: str, n: int, m: int, owner, labels):
    from xmcore.data import Split

    items = {first: range(n), second: range(m)}
    if labels is None:
        return Split((first, second), items, owner)
    return Split((first, second), items, owner, labels=labels[0], relevance="label", member_labels=labels[1])


def _legacy(arrays: dict[str, np.ndarray], fail) -> EmbeddingsFile:
    """A run directory's embeddings.npz from before this format: emb_A, groups_A, owner, modalities."""
    first, second = _modalities(arrays, fail)[:2]
    needed = [f"emb_{first}", f"emb_{second}", f"groups_{first}", f"groups_{second}", "owner"]
    missing = [k for k in needed if k not in arrays]
    if missing:
        raise fail(f"an older run's embeddings file without {', '.join(map(repr, missing))}; run `xmcore evaluate RUN_DIR` again")
    emb = {m: _embedding_array(arrays[f"emb_{m}"], f"emb_{m}", fail) for m in (first, second)}
    n, m = len(emb[first]), len(emb[second])
    owner = _owner_array(arrays["owner"], "owner", m, n, first, second, fail)
    groups = [arrays[f"groups_{x}"].astype(np.int64) for x in (first, second)]
    return EmbeddingsFile(_split(first, second, n, m, owner, groups), emb)
