"""xmcore from Python: embed items with a trained model, search an index, train a recipe.

    import xmcore

    model = xmcore.load("runs/shapes")             # a run directory (its best checkpoint) or an index folder
    emb = model.encode_text(["a red circle"])      # L2-normalised float32, numpy (as_tensor=True: torch)
    emb = model.encode_image(["photo.jpg", pil_image])
    emb = model.encode(modality, ["file.ext"])     # any modality the model holds (a plugin's, too)

    hits = xmcore.open_index("indexes/shapes").search(text="a red circle", k=5)
    hits[0].id, hits[0].score, hits[0].metadata["caption"]

    run_dir, metrics = xmcore.run("recipes/quickstart.yaml", overrides=["trainer.max_epochs=1"])

Everything goes through what the command line uses, so a vector here is the vector ``xmcore index`` stores and
``xmcore search`` ranks with: the same encoders, weights and preprocessing (:class:`xmcore.search.QueryModel`),
and files read as ``xmcore search --<modality> FILE`` reads them (:mod:`xmcore.media`).  Nothing here imports
torch until a model is loaded: ``import xmcore`` stays light.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from xmcore.errors import XmcoreError, did_you_mean

__all__ = ["Hit", "Index", "Model", "RunResult", "load", "open_index", "run"]


class Model:
    """A trained model's encoders and fusion, ready to embed items of any of its modalities.

    Made by :func:`load` (or :attr:`Index.model`); ``model.modalities`` lists what it embeds."""

    def __init__(self, query_model, source: Path):
        self._model = query_model
        self.source = Path(source)

    def __repr__(self) -> str:
        return f"<xmcore.Model {', '.join(self.modalities)} -> {self.dim}-d, from {self.source}, on {self.device}>"

    @property
    def modalities(self) -> list[str]:
        return list(self._model.encoders)

    @property
    def file_modalities(self) -> list[str]:
        """The modalities whose items may be given as files (a path or the file's bytes)."""
        return self._model.file_modalities

    @property
    def dim(self) -> int:
        """The common space's dimension: each embedding's length."""
        return int(self._model.recipe.fusion.dim)

    @property
    def recipe(self):
        """The resolved recipe the model was trained with (:class:`xmcore.recipe.Recipe`)."""
        return self._model.recipe

    @property
    def device(self):
        return self._model.device

    def to(self, device) -> "Model":
        """Move the weights to ``device`` (``"cuda"``, ``"cuda:1"``, ``"cpu"``, a ``torch.device``)."""
        self._model.to(_device(device))
        return self

    def encode(self, modality: str, items: Sequence[Any], *, batch_size: int | None = None,
               progress: bool | None = None, as_tensor: bool = False):
        """L2-normalised embeddings of ``items`` of ``modality``, one row each (``len(items) x dim``, float32).

        An item is what the modality's encoder reads -- a string for text, a PIL image -- or, for a
        modality whose encoder reads files (:attr:`file_modalities`: images, and a plugin's modalities whose encoders read files), a path (``str`` or
        ``Path``) or a file's bytes, read as ``xmcore search --<modality> FILE`` reads it.  Items are
        read and embedded ``batch_size`` at a time (default: the recipe's ``eval.batch_size``), with a
        progress bar when there is more than one batch (``progress=True``/``False``: always/never).
        Returns a numpy array, or with ``as_tensor=True`` a torch tensor on the model's device."""
        import torch

        encoder = self._encoder(modality)
        items = _item_list(items, f"encode('{modality}', items)")
        size = self._model.recipe.eval.batch_size if batch_size is None else batch_size
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise XmcoreError(f"batch_size: expected a positive number of items, got {batch_size!r}")
        batches = [items[lo:lo + size] for lo in range(0, len(items), size)]
        bar = _progress_bar(len(items), f"encoding {modality}", progress if progress is not None else len(batches) > 1)
        out = []
        try:
            for lo, batch in zip(range(0, len(items), size), batches):
                raw = [self._read(encoder, modality, item, lo + i) for i, item in enumerate(batch)]
                out.append(self._model.embed_tensor(modality, raw))
                bar.update(len(batch))
        finally:
            bar.close()
        embeddings = torch.cat(out)
        return embeddings if as_tensor else embeddings.cpu().numpy()

    def encode_text(self, texts: Sequence[str], **options):
        """:meth:`encode` of ``"text"`` items: a list of strings."""
        return self.encode("text", texts, **options)

    def encode_image(self, images: Sequence[Any], **options):
        """:meth:`encode` of ``"image"`` items: PIL images, paths of image files, or their bytes."""
        return self.encode("image", images, **options)

    def _encoder(self, modality: str):
        if modality not in self._model.encoders:
            raise XmcoreError(f"{self.source}: the model has no '{modality}' encoder; {did_you_mean(modality, self.modalities)}"
                              f"it embeds: {', '.join(self.modalities)}")
        return self._model.encoders[modality]

    def _read(self, encoder, modality: str, item: Any, position: int) -> Any:
        """A raw item: files (a path, bytes) read by the modality's query reader, anything else as it is."""
        from xmcore.media import query_reader, read_query_file

        reader = query_reader(encoder, modality)
        is_file = isinstance(item, (bytes, bytearray, os.PathLike)) or (isinstance(item, str) and reader is not None)
        if not is_file:
            return item
        where = f"items[{position}]" + ("" if isinstance(item, (bytes, bytearray)) else f" ({item})")
        if reader is None:
            raise XmcoreError(f"{where}: the '{modality}' encoder reads no files; give the items themselves "
                              f"(files are read for: {', '.join(self.file_modalities) or 'no modality'})")
        return read_query_file(item, reader, f"items[{position}]")


@dataclass(frozen=True)
class Hit:
    """One search result: its rank (1 first), cosine score, id (``image-12``) and the index's metadata of the
    item (``caption`` or ``path``/``media``, ``split``, ``label``, ``belongs_to``: what ``xmcore search --json``
    prints)."""

    rank: int
    score: float
    id: str
    metadata: dict[str, Any] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The hit as ``xmcore search --json`` prints it."""
        return {"rank": self.rank, "score": self.score, **self.metadata}


class Index:
    """An index folder written by ``xmcore index``, opened for searching (:func:`open_index`)."""

    def __init__(self, search_index):
        self._index = search_index
        self.path = search_index.dir
        self.model = Model(search_index.model, search_index.dir)
        """The index's stored model: embeds queries (or anything else) exactly as the gallery was embedded."""

    def __repr__(self) -> str:
        counts = ", ".join(f"{m}: {n}" for m, n in self.counts.items())
        return f"<xmcore.Index {self.path} ({counts})>"

    @property
    def modalities(self) -> list[str]:
        """The modalities the index holds items of (targets of a search)."""
        return self._index.modalities

    @property
    def counts(self) -> dict[str, int]:
        return {m: entry["count"] for m, entry in self._index.manifest["modalities"].items()}

    @property
    def manifest(self) -> dict[str, Any]:
        return self._index.manifest

    def item(self, item_id: str) -> dict[str, Any]:
        """The metadata of the item ``item_id`` (``"image-3"``)."""
        if item_id not in self._index.by_id:
            raise XmcoreError(f"{self.path}: no item '{item_id}'; ids are <modality>-<row>, e.g. "
                              f"{', '.join(f'{m}-0' for m in self.modalities)}")
        return dict(self._index.by_id[item_id])

    def search(self, *, k: int = 10, target: str | None = None, **query: Any) -> list[Hit]:
        """The ``k`` items of ``target`` (default: another modality than the query's) nearest to one query,
        given by its modality: ``search(text="a red circle")``, ``search(image="photo.jpg")`` (a path, the
        file's bytes or a PIL image), ``search(<modality>=...)`` for a plugin's modality.  What the query's encoder notes about it (e.g.
        words it does not know) comes as a warning."""
        if len(query) != 1:
            given = f" (got {', '.join(query)})" if query else ""
            raise XmcoreError(f"search: give one query as <modality>=..., e.g. search(text='a red circle', k=5){given}; "
                              f"this index's model takes: {', '.join(self.model.modalities)}")
        if not isinstance(k, int) or k < 1:
            raise XmcoreError(f"search: k is the number of results, a positive number; got {k!r}")
        (modality, value), = query.items()
        self.model._encoder(modality)
        if target is not None and target not in self.modalities:
            raise XmcoreError(f"search: target='{target}': {did_you_mean(target, self.modalities)}this index holds "
                              f"{', '.join(self.modalities)}")
        if isinstance(value, str) and not value.strip() and modality not in self.model.file_modalities:
            raise XmcoreError(f"search: the {modality} query is empty")
        raw = self.model._read(self.model._model.encoders[modality], modality, value, 0)
        for note in self._index.query_warnings(modality, raw):
            warnings.warn(note, stacklevel=2)
        results = self._index.search(modality, raw, k, target)
        return [Hit(r.pop("rank"), r.pop("score"), r["id"], r) for r in results]


class RunResult(NamedTuple):
    """What :func:`run` returns: the run directory and the evaluation split's metrics (``None`` in a
    distributed process other than the first)."""

    run_dir: Path
    metrics: dict[str, float] | None


def load(path: str | os.PathLike, *, device=None) -> Model:
    """The model of a run directory (``xmcore run``: its best checkpoint, else its last) or of an index
    folder (``xmcore index``: the model stored in it), on ``device`` (default: the CPU)."""
    path = Path(path)
    if _is_index(path):
        return open_index(path, device=device).model
    if (path / "recipe.yaml").is_file():
        from xmcore.search import QueryModel
        from xmcore.plugins import load_plugins
        from xmcore.run import best_checkpoint, rebuild_trained

        # The run's own path: encoders whose vocabulary comes from the training data rebuild it.
        recipe, _, module, _ = rebuild_trained(path, best_checkpoint(path), [], load_plugins(), None, "overrides")
        model = Model(QueryModel.of(module.encoders, module.fusion, recipe, f"the run {path}"), path)
        return model.to(device) if device is not None else model
    raise XmcoreError(_neither(path))


def open_index(path: str | os.PathLike, *, device=None, check: bool = True) -> Index:
    """An index folder written by ``xmcore index``, for :meth:`Index.search`; ``check`` compares the files a
    search reads with the manifest's checksums first (as ``xmcore search`` does)."""
    from xmcore.search import SearchIndex
    from xmcore.plugins import load_plugins

    path = Path(path)
    if not _is_index(path):
        raise XmcoreError(_neither(path) if not (path / "recipe.yaml").is_file() else
                          f"{path} is a run directory, not an index folder; build one with "
                          f"`xmcore index {path} --out INDEX_DIR`, or embed with xmcore.load('{path}')")
    index = Index(SearchIndex(path, load_plugins(), check=check))
    if device is not None:
        index.model.to(device)
    return index


def run(recipe: str | os.PathLike, overrides: Sequence[str] = (), out: str | os.PathLike | None = None, *,
        resume: bool = False, verbose: bool = False) -> RunResult:
    """Train and evaluate a recipe in this process, as ``xmcore run RECIPE OVERRIDES --out OUT`` does:
    returns the run directory (default ``runs/<recipe name>-<time>``) and the metrics."""
    from xmcore.plugins import load_plugins
    from xmcore.quiet import configure
    from xmcore.recipe import load_recipe, validate
    from xmcore.run import default_run_dir, train_and_evaluate

    if isinstance(overrides, str):
        raise XmcoreError(f"overrides: expected a list of 'key=value' strings, e.g. [{overrides!r}]")
    configure(verbose=verbose)
    plugins = load_plugins()
    loaded = load_recipe(recipe, list(overrides))
    validated = validate(loaded, plugins)
    run_dir = Path(out) if out is not None else default_run_dir(validated)
    metrics = train_and_evaluate(validated, plugins, loaded.base_dir, run_dir, resume=resume)
    return RunResult(run_dir, metrics)


def _is_index(path: Path) -> bool:
    # building.json alone: an interrupted build, which read_manifest explains
    return (path / "manifest.json").is_file() or (path / "building.json").is_file()


def _neither(path: Path) -> str:
    if not path.exists():
        return f"{path}: no such folder; expected a run directory (`xmcore run`) or an index folder (`xmcore index`)"
    return (f"{path}: neither a run directory (recipe.yaml and checkpoints/, written by `xmcore run`) nor an index "
            "folder (manifest.json, written by `xmcore index`)")


def _item_list(items: Any, call: str) -> list[Any]:
    if isinstance(items, (str, bytes, bytearray, os.PathLike)) or not isinstance(items, Sequence):
        raise XmcoreError(f"{call}: expected a list of items, got {type(items).__name__}; pass a list, even of one "
                          "item (e.g. encode_text(['a red circle'])), or list(...) of an array or series")
    if not items:
        raise XmcoreError(f"{call}: the list of items is empty")
    return list(items)


def _device(device):
    import torch

    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise XmcoreError(f"device: {device!r} is not a device torch knows ({exc}); e.g. 'cpu', 'cuda', 'cuda:1'") from None


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, desc: str, show: bool):
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm  # a dependency of Lightning's; in a notebook, its widget

    return tqdm(total=total, desc=desc, unit="item")
