"""``hf``: Hugging Face datasets files, read with pyarrow (the ``datasets`` library is not needed).

Layouts read, by what ``path`` names:

* a Parquet file (``Dataset.to_parquet``, a file of a Hub repository) or an Arrow file;
* a folder written by ``Dataset.save_to_disk`` (``state.json``, ``dataset_info.json``, ``data-*.arrow``);
* a folder written by ``DatasetDict.save_to_disk`` (``dataset_dict.json`` and a folder per split);
* any other folder of Parquet/Arrow files, as a Hub repository is downloaded (``data/train-00000-of-00002.parquet``,
  ``default/test/0000.parquet``): a file's split is the first of its folder names or its name's first word that
  names a split.

A row is one image with one caption or a list of captions (``id_column`` groups rows that share an image).
Images are bytes, a path (relative to the file's folder) or a ``datasets.Image`` feature (``{bytes, path}``);
bytes stay in the files and are read in the DataLoader workers: Arrow files memory-mapped, Parquet files a
row group at a time (a few row groups kept per process).  Class names of a ``ClassLabel`` label column come
from the features ``datasets`` stores in the files' schema.
"""

from __future__ import annotations

import io
import json
import re
import sys
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from xmcore.data import ImageFile, LazyItem, RetrievalData, Split, image_problem, outside_folder, seeded_split
from xmcore.errors import XmcoreError
from xmcore_datasets.webdataset import MissingImage

SPLIT_NAMES = {  # the names Hugging Face's data-files patterns recognise, by the xmcore split they become
    "train": ("train", "training"),
    "val": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing", "eval", "evaluation"),
}
TABLE_SUFFIXES = (".parquet", ".arrow")


@dataclass(frozen=True)
class TableImage(LazyItem):
    """An image stored in a cell of a Parquet or Arrow file: bytes, or a path to the picture."""

    file: Path
    column: str
    row: int  # the row within the file
    group: int = -1  # Parquet: the row group holding it, and ``index`` its row inside it; -1 for Arrow files
    index: int = -1

    def load(self):
        from xmcore.media import open_image

        value = self._value()
        if isinstance(value, Path):
            problem = outside_folder(value, self.file.parent)
            if problem:  # check() says so first; this keeps load() from following the link all the same
                raise PermissionError(problem)
            return open_image(value)
        return open_image(io.BytesIO(value))

    def _value(self) -> bytes | Path:
        """The cell's picture: its bytes, or the path of its file (relative paths: to the table's folder)."""
        value = _cell(self)
        if isinstance(value, dict):  # a datasets Image feature: bytes, or else a path
            value = value.get("bytes") or value.get("path")
        if value is None:
            raise FileNotFoundError(f"no image in row {self.row} of column '{self.column}'")
        if isinstance(value, str):
            path = Path(value).expanduser()
            return path if path.is_absolute() else self.file.parent / path
        return value

    def check(self) -> str | None:
        """Why the picture cannot be used, or ``None``; a path cell that a symbolic link leads out of the
        table's folder is refused, as for every dataset of files (``xmcore.data.outside_folder``)."""
        try:
            value = self._value()
        except Exception as exc:  # noqa: BLE001 -- a cell that cannot be read: the reason is the problem
            return f"unreadable image ({type(exc).__name__}: {exc})"
        if isinstance(value, Path):
            problem = outside_folder(value, self.file.parent)
            if problem:
                return problem
        return image_problem(self.load)

    def fingerprint(self) -> str:
        st = self.file.stat()
        return f"{self.file}:{st.st_size}:{st.st_mtime_ns}:{self.column}:{self.row}"

    def __str__(self) -> str:
        return f"{self.file}:row {self.row}"


def _cell(item: TableImage) -> Any:
    if item.group < 0:
        return _arrow_table(str(item.file)).column(item.column)[item.row].as_py()
    return _parquet_group(str(item.file), item.group, item.column)[item.index].as_py()


_parquet_lock = threading.Lock()


@lru_cache(maxsize=8)
def _parquet_group(file: str, group: int, column: str):
    import pyarrow.parquet as pq

    with _parquet_lock:
        return pq.ParquetFile(file).read_row_group(group, columns=[column]).column(0)


@lru_cache(maxsize=64)
def _arrow_table(file: str):
    """An Arrow file's table, memory-mapped: rows are read from the page cache, nothing is copied."""
    import pyarrow as pa

    source = pa.memory_map(file)
    try:
        return pa.ipc.open_stream(source).read_all()  # datasets writes the streaming format
    except pa.ArrowInvalid:
        source.seek(0)
        return pa.ipc.open_file(source).read_all()


# ------------------------------------------------------------------------------------------------ files


@dataclass
class TableFile:
    """One Parquet or Arrow file and the split its place in the layout names (``None``: none)."""

    path: Path
    split: str | None

    def schema(self):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            if self.path.suffix == ".parquet":
                return pq.read_schema(self.path)
            return _arrow_table(str(self.path)).schema
        except (pa.ArrowException, OSError) as exc:
            kind = "Parquet" if self.path.suffix == ".parquet" else "Arrow"
            raise XmcoreError(f"{self.path}: not a readable {kind} file ({type(exc).__name__}: {exc})") from None

    def read(self, columns: list[str]):
        import pyarrow.parquet as pq

        if self.path.suffix == ".parquet":
            return pq.read_table(self.path, columns=columns)
        return _arrow_table(str(self.path)).select(columns)

    def locations(self) -> tuple[np.ndarray, np.ndarray]:
        """Each row's Parquet row group and index inside it (-1 for an Arrow file)."""
        import pyarrow.parquet as pq

        if self.path.suffix != ".parquet":
            rows = _arrow_table(str(self.path)).num_rows
            return np.full(rows, -1), np.full(rows, -1)
        meta = pq.ParquetFile(self.path).metadata
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        group = np.repeat(np.arange(len(sizes)), sizes)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)
        return group, np.arange(len(group)) - starts[group] if len(group) else np.zeros(0, dtype=int)


def table_files(path: Path) -> list[TableFile]:
    """The Parquet/Arrow files ``path`` names, each with the split its layout gives it."""
    if path.is_file():
        if path.suffix not in TABLE_SUFFIXES:
            raise XmcoreError(f"data.path: {path} is not a .parquet or .arrow file (or a folder of them)")
        return [TableFile(path, None)]
    if not path.is_dir():
        raise XmcoreError(f"data.path: no such file or folder {path}")
    if (path / "dataset_dict.json").is_file():  # DatasetDict.save_to_disk
        splits = _json(path / "dataset_dict.json").get("splits")
        if not isinstance(splits, list) or not splits:
            raise XmcoreError(f"{path / 'dataset_dict.json'}: expected {{\"splits\": [...]}} naming the split folders")
        return [TableFile(f.path, str(name)) for name in splits for f in _saved_dataset(path / str(name), str(name))]
    if (path / "state.json").is_file():  # Dataset.save_to_disk
        return _saved_dataset(path, None)
    files = sorted(p for p in path.rglob("*") if p.suffix in TABLE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise XmcoreError(
            f"data.path: {path} holds no .parquet or .arrow files (nor a dataset_dict.json or state.json of "
            "datasets' save_to_disk)"
        )
    named = [TableFile(f, _split_in_name(f.relative_to(path))) for f in files]
    unnamed = [f.path for f in named if f.split is None]
    if unnamed and len(unnamed) < len(named):
        raise XmcoreError(
            f"data.path: {unnamed[0]} names no split, unlike {next(f.path for f in named if f.split)}; put every file "
            "under a split's name (train-*.parquet, test/...), or point data.path at one split's files"
        )
    return named


def _saved_dataset(folder: Path, split: str | None) -> list[TableFile]:
    state_file = folder / "state.json"
    if not state_file.is_file():
        raise XmcoreError(f"{folder}: no state.json; expected a folder written by datasets' save_to_disk")
    state = _json(state_file)
    entries = state.get("_data_files")
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "filename" in e for e in entries):
        raise XmcoreError(f"{state_file}: expected \"_data_files\": [{{\"filename\": ...}}] as datasets writes it")
    missing = [e["filename"] for e in entries if not (folder / e["filename"]).is_file()]
    if missing:
        raise XmcoreError(f"{state_file}: lists {missing[0]}, which is not in {folder}")
    return [TableFile(folder / e["filename"], split or state.get("_split")) for e in entries]


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise XmcoreError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise XmcoreError(f"{path}: expected a JSON object")
    return data


def _split_in_name(relative: Path) -> str | None:
    """The split a file's place names, as the Hub lays files out: a folder (``test/0000.parquet``) or the file
    name's first word (``train-00000-of-00002.parquet``)."""
    known = {name for names in SPLIT_NAMES.values() for name in names}
    words = [part.lower() for part in relative.parts[:-1]] + [re.split(r"[-_.]", relative.name.lower())[0]]
    return next((w for w in words if w in known), None)


# ------------------------------------------------------------------------------------------------ rows


def read_hf(params, ctx) -> RetrievalData:
    root = ctx.path(params.path)
    files = table_files(root)
    rows = [row for f in files for row in _rows(f, params)]
    if not rows:
        raise XmcoreError(f"{root}: no rows")
    label_names = _label_names(files[0], params.label_column, rows)
    assigned = _assign_splits(rows, files, params, root)
    splits = {name: _split(part, label_names) for name, part in assigned.items() if part}
    return RetrievalData(splits, description=f"hf {root}", extras={"label_names": label_names or []})


def _rows(file: TableFile, params) -> list[dict[str, Any]]:
    """One record per row: the image item, its captions, label, split and grouping id."""
    import pyarrow as pa

    schema = file.schema()
    wanted = {"data.image_column": params.image_column, "data.caption_column": params.caption_column,
              "data.label_column": params.label_column, "data.id_column": params.id_column,
              "data.split_column": params.split_column}
    missing = [(key, column) for key, column in wanted.items() if column and column not in schema.names]
    if missing:
        key, column = missing[0]
        raise XmcoreError(
            f"{file.path}: no column '{column}' ({key}); its columns: {', '.join(schema.names)}; set {key} to match"
        )
    image_type = schema.field(params.image_column).type
    caption_type = schema.field(params.caption_column).type
    paths = pa.types.is_string(image_type) or pa.types.is_large_string(image_type)
    stored = pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type) or (
        pa.types.is_struct(image_type) and image_type.get_field_index("bytes") >= 0)
    if not (paths or stored):
        raise XmcoreError(
            f"{file.path}: column '{params.image_column}' (data.image_column) holds {image_type}; expected image bytes, "
            "a path, or a datasets Image feature (a struct of bytes and path)"
        )
    if not (_is_text(caption_type) or (pa.types.is_list(caption_type) or pa.types.is_large_list(caption_type))
            and _is_text(caption_type.value_type)):
        raise XmcoreError(
            f"{file.path}: column '{params.caption_column}' (data.caption_column) holds {caption_type}; expected a "
            "string or a list of strings"
        )
    columns = [c for c in dict.fromkeys([params.image_column if paths else None, params.caption_column,
                                         params.label_column, params.id_column, params.split_column]) if c]
    table = file.read(columns).to_pydict()
    count = len(table[params.caption_column])
    groups, indices = file.locations() if not paths else (None, None)
    records = []
    for n in range(count):
        same_image = None  # what makes rows one image: the id column, else an image's path
        if paths:
            value = table[params.image_column][n]
            image = ImageFile(_resolve(file.path.parent, value), file.path.parent) if value else MissingImage(f"{file.path}:row {n}", "row without image")
            same_image = str(image.path) if value else None
        else:
            image = TableImage(file.path, params.image_column, n, int(groups[n]), int(indices[n]))
        if params.id_column:
            same_image = table[params.id_column][n]
        captions = table[params.caption_column][n]
        captions = [] if captions is None else [captions] if isinstance(captions, str) else [c or "" for c in captions]
        records.append({
            "image": image, "captions": captions, "where": f"{file.path}:row {n}",
            "label": table[params.label_column][n] if params.label_column else None,
            "split": table[params.split_column][n] if params.split_column else file.split,
            "key": (file.split, same_image) if same_image is not None else (str(file.path), n),
        })
    return records


def _is_text(arrow_type) -> bool:
    import pyarrow as pa

    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)


def _resolve(folder: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else folder / path


def _label_names(file: TableFile, column: str | None, rows: list[dict[str, Any]]) -> list[str] | None:
    """Class names: a ClassLabel feature's (stored by datasets in the schema), else the labels' values sorted;
    labels become their indices among them."""
    if not column:
        return None
    features = {}
    metadata = file.schema().metadata or {}
    if b"huggingface" in metadata:
        try:
            features = json.loads(metadata[b"huggingface"]).get("info", {}).get("features", {})
        except (json.JSONDecodeError, AttributeError):
            features = {}
    feature = features.get(column) if isinstance(features, dict) else None
    if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and isinstance(feature.get("names"), list):
        names = [str(n) for n in feature["names"]]
        for r in rows:
            r["label"] = int(r["label"]) if r["label"] is not None and 0 <= int(r["label"]) < len(names) else -1
        return names
    names = sorted({str(r["label"]) for r in rows if r["label"] is not None})
    ids = {name: i for i, name in enumerate(names)}
    for r in rows:
        r["label"] = ids.get(str(r["label"]), -1) if r["label"] is not None else -1
    return names


def _assign_splits(rows: list[dict[str, Any]], files: list[TableFile], params, root: Path) -> dict[str, list]:
    """Rows by xmcore split: the files' (or the split column's) split names mapped by ``params.splits`` or by
    the usual names; data without split names, or with a train split only, split by ``split_ratios``."""
    mapping = {theirs: ours for ours, theirs in params.splits.items()} if params.splits else {
        name: ours for ours, names in SPLIT_NAMES.items() for name in names}
    named = {r["split"] for r in rows if r["split"] is not None}
    if not named:
        return _by_ratios(rows, params)
    if any(r["split"] is None for r in rows):
        where = next(r["where"] for r in rows if r["split"] is None)
        raise XmcoreError(f"{where}: no split in column '{params.split_column}' (data.split_column), unlike other rows")
    left_out = sorted(str(s) for s in named if str(s).lower() not in mapping and str(s) not in mapping)
    if left_out:
        counts = ", ".join(f"'{s}' ({sum(str(r['split']) == s for r in rows)} rows)" for s in left_out)
        print(f"note: {root}: left out split {counts}: not among data.splits "
              f"({', '.join(f'{k}: {v}' for k, v in sorted(mapping.items()))})", file=sys.stderr)
    out: dict[str, list] = {"train": [], "val": [], "test": []}
    for r in rows:
        ours = mapping.get(str(r["split"])) or mapping.get(str(r["split"]).lower())
        if ours:
            out[ours].append(r)
    if not out["train"]:
        raise XmcoreError(
            f"{root}: no rows for the train split; the data's splits are {', '.join(sorted(map(str, named)))}: "
            "choose with data.splits (e.g. data.splits={train: NAME, test: NAME})"
        )
    if not out["val"] and not out["test"]:  # a train split only, as many Hub datasets have
        return _by_ratios(out["train"], params)
    return out


def _by_ratios(rows: list[dict[str, Any]], params) -> dict[str, list]:
    keys = list(dict.fromkeys(r["key"] for r in rows))  # an image's rows stay in one split
    parts = seeded_split(len(keys), params.split_ratios, params.seed)
    split_of = {keys[i]: name for name, idx in parts.items() for i in idx}
    out: dict[str, list] = {}
    for r in rows:
        out.setdefault(split_of[r["key"]], []).append(r)
    return out


def _split(rows: list[dict[str, Any]], label_names: list[str] | None) -> Split:
    owners: dict[Any, dict[str, Any]] = {}
    for r in rows:
        entry = owners.setdefault(r["key"], {"image": r["image"], "captions": [], "label": r["label"]})
        entry["captions"] += r["captions"]
    images, texts, owner, labels = [], [], [], []
    for k, entry in enumerate(owners.values()):
        images.append(entry["image"])
        labels.append(entry["label"])
        texts += entry["captions"]
        owner += [k] * len(entry["captions"])
    return Split(("image", "text"), {"image": images, "text": texts}, np.array(owner, dtype=np.int64),
                 np.array(labels) if label_names is not None else None)
