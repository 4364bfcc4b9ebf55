"""Querying an index folder: the model stored in it (:class:`QueryModel`, written by :func:`export_model`)
and the folder opened for searches (:class:`SearchIndex`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, BinaryIO, Sequence

import numpy as np

from xmcore.errors import XmcoreError
from xmcore.io import atomic_torch_save, file_sha256 as sha256, write_yaml
from xmcore.media import query_reader, servable_type
from xmcore.search.folder import read_manifest, verify
from xmcore.search.ivf import open_faiss


def export_model(module, recipe, model_dir: Path) -> None:
    """Weights, recipe and encoder assets of ``module`` into ``model_dir`` (see the module docstring).

    Every modality's encoder goes in, indexed or not: queries come from the other modalities."""
    model_dir.mkdir(parents=True, exist_ok=True)
    resolved = recipe.resolved()
    for modality in module.modalities:
        encoder = module.encoders[modality]
        export = getattr(encoder, "export", None)
        changes = export(model_dir / f"{modality}-encoder") if export else {}
        for key, value in changes.items():
            resolved["encoders"][modality][key] = value
        resolved["encoders"][modality].pop("freeze", None)
    state = {k: v for k, v in module.state_dict().items() if k.startswith(("fusion.", "encoders."))}
    atomic_torch_save(state, model_dir / "weights.pt")
    write_yaml(model_dir / "recipe.yaml", resolved)


class QueryModel:
    """The encoders and fusion stored in an index folder (or, through :meth:`of`, a trained run's): reads query
    files and embeds items of any of its modalities into the common space."""

    def __init__(self, model_dir: Path, plugins):
        import torch

        from xmcore.recipe import load_recipe, validate
        from xmcore.registry import BuildContext
        from xmcore.safeload import load_weights

        model_dir = Path(model_dir)
        recipe = validate(load_recipe(model_dir / "recipe.yaml", []), plugins)
        state = load_weights(model_dir / "weights.pt", "the index's model")
        encoders = torch.nn.ModuleDict()
        for modality in sorted({k.split(".")[1] for k in state if k.startswith("encoders.")}):
            section = recipe.encoders[modality]
            ctx = BuildContext(seed=recipe.seed, base_dir=model_dir, modality=modality, train_items=lambda: [])
            encoders[modality] = section.component.build(section.params, ctx)
        dims = {m: int(e.output_dim) for m, e in encoders.items()}
        fusion = recipe.fusion.component.build(
            recipe.fusion.params, BuildContext(seed=recipe.seed, base_dir=model_dir, input_dims=dims, dim=recipe.fusion.dim)
        )
        holder = torch.nn.Module()
        holder.encoders, holder.fusion = encoders, fusion
        holder.load_state_dict(state)
        self._use(encoders, fusion, recipe, "this index")
        self.model_dir = model_dir

    @classmethod
    def of(cls, encoders, fusion, recipe, holder: str) -> "QueryModel":
        """The same for encoders and fusion built elsewhere (a trained run's module, weights loaded);
        ``holder`` names them in messages (``"the run runs/x"``)."""
        model = cls.__new__(cls)
        model._use(encoders, fusion, recipe, holder)
        model.model_dir = None
        return model

    def _use(self, encoders, fusion, recipe, holder: str) -> None:
        import torch

        self.encoders = encoders if isinstance(encoders, torch.nn.ModuleDict) else torch.nn.ModuleDict(dict(encoders))
        self.fusion = fusion
        self.encoders.eval()
        self.fusion.eval()
        self.recipe = recipe
        self.holder = holder

    def _encoder(self, modality: str):
        if modality not in self.encoders:
            raise XmcoreError(f"{self.holder} holds no '{modality}' encoder; it has: {', '.join(self.encoders)}")
        return self.encoders[modality]

    @property
    def device(self):
        """Where the weights are (the first parameter's device; the CPU for a model without any)."""
        import torch

        for module in (*self.encoders.values(), self.fusion):
            for tensor in (*module.parameters(), *module.buffers()):
                return tensor.device
        return torch.device("cpu")

    def to(self, device) -> "QueryModel":
        self.encoders.to(device)
        self.fusion.to(device)
        return self

    @property
    def file_modalities(self) -> list[str]:
        """The modalities whose queries may be files (their encoder reads them; images always)."""
        return [m for m, encoder in self.encoders.items() if query_reader(encoder, m) is not None]

    def read_query(self, modality: str, file: BinaryIO) -> Any:
        """A query file (an open binary file) as a raw item of ``modality``; :class:`QueryError` if unusable."""
        reader = query_reader(self._encoder(modality), modality)
        if reader is None:
            takes = ", ".join(self.file_modalities) or "none"
            raise XmcoreError(f"the '{modality}' encoder of {self.holder} reads no query files (it has no "
                              f"read_query); the modalities it takes files of: {takes}")
        return reader(file)

    def embed(self, modality: str, items: Sequence[Any]) -> np.ndarray:
        """L2-normalised embeddings of raw items (strings, PIL images, what ``read_query`` returns) of one modality."""
        return self.embed_tensor(modality, items).cpu().numpy()

    def embed_tensor(self, modality: str, items: Sequence[Any]):
        """The same as a float32 tensor on the model's device; the items are one batch."""
        import torch

        from xmcore.data import materialize

        encoder = self._encoder(modality)
        batch = encoder.preprocessor.collate([encoder.preprocessor(materialize(x)) for x in items])
        device = self.device
        if device.type != "cpu":  # preprocessors collate on the CPU; Lightning is imported only when it must move
            from pytorch_lightning.utilities import move_data_to_device

            batch = move_data_to_device(batch, device)
        with torch.no_grad():
            out = self.fusion(encoder(batch), modality)
        return torch.nn.functional.normalize(out.float(), dim=-1)


class SearchIndex:
    """An index folder opened for queries: FAISS indexes, metadata and the query model."""

    def __init__(self, index_dir: Path, plugins, check: bool = True):
        self.dir = Path(index_dir)
        self.manifest = read_manifest(self.dir)
        if check:
            bad = verify(self.dir, self.manifest, embeddings=False)
            if bad:
                raise XmcoreError(
                    f"{self.dir}: {len(bad)} files differ from the manifest ({', '.join(bad[:5])}); the index is "
                    "damaged or was changed by hand: rebuild it with `xmcore index`"
                )
        self.indexes, self.items = {}, {}
        for modality, entry in self.manifest["modalities"].items():
            self.indexes[modality] = open_faiss(self.dir, entry["index"])
            with open(self.dir / entry["metadata"], encoding="utf-8") as fh:
                self.items[modality] = [json.loads(line) for line in fh if line.strip()]
        self.by_id = {meta["id"]: meta for rows in self.items.values() for meta in rows}
        self.model = QueryModel(self.dir / "model", plugins)

    def media_file(self, meta: dict[str, Any]) -> tuple[Path, str] | None:
        """The file that shows an item and its media type, if the index lists one: a copy inside the index
        folder (checked against the manifest's checksum) or the item's own file, of a type an index serves
        (pictures, sound, film; never text, documents or SVG); never a path that came from elsewhere."""
        if "media" in meta:
            root = self.dir.resolve()
            path = (self.dir / meta["media"]).resolve()
            expected = self.manifest.get("media_checksums", {}).get(path.name)
            if path.parent != root / "media" or not path.is_file() or expected is None or sha256(path) != expected:
                return None
        elif "path" in meta:
            path = Path(meta["path"])
            if not path.is_file():
                return None
        else:
            return None
        kind = servable_type(path)
        return (path, kind) if kind else None

    def media_type(self, meta: dict[str, Any]) -> str | None:
        """The media type an item's file is served as (from its name: no file is opened), or ``None``."""
        return servable_type(meta.get("media") or meta.get("path"))

    @property
    def file_modalities(self) -> list[str]:
        """The modalities a query file may be of (their encoder reads files), whether indexed or not."""
        return self.model.file_modalities

    def read_query(self, modality: str, file: BinaryIO) -> Any:
        """A query file as a raw item of ``modality`` (:class:`xmcore.errors.QueryError` says why it cannot be)."""
        return self.model.read_query(modality, file)

    @property
    def modalities(self) -> list[str]:
        return list(self.manifest["modalities"])

    def default_target(self, query_modality: str) -> str:
        others = [m for m in self.modalities if m != query_modality]
        return others[0] if others else query_modality

    def search(self, query_modality: str, query: Any, k: int = 10, target: str | None = None) -> list[dict[str, Any]]:
        return self.search_many(query_modality, [query], k, target)[0]

    def search_many(self, query_modality: str, queries: Sequence[Any], k: int = 10,
                    target: str | None = None) -> list[list[dict[str, Any]]]:
        """The results of each query, the queries embedded as one batch and searched as one matrix."""
        target = self.check_target(target or self.default_target(query_modality))
        return self.search_vectors(target, self.embed_queries(query_modality, queries), k)

    def check_target(self, target: str) -> str:
        """``target`` if this index holds that modality; :class:`XmcoreError` otherwise."""
        if target not in self.indexes:
            raise XmcoreError(f"--target: this index holds {', '.join(self.modalities)}, not '{target}'")
        return target

    def embed_queries(self, query_modality: str, queries: Sequence[Any]) -> np.ndarray:
        """The queries' embeddings (float32, L2-normalised, one row each), embedded as one batch."""
        return np.ascontiguousarray(self.model.embed(query_modality, queries), dtype=np.float32)

    def search_vectors(self, target: str, vectors: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
        """The ``k`` nearest items of ``target`` to each row of ``vectors`` (from :meth:`embed_queries`)."""
        scores, rows = self.indexes[self.check_target(target)].search(vectors, k)
        items = self.items[target]  # Python lists, not numpy scalars: a server builds these for every query
        return [[{"rank": rank, "score": score, **items[row]}
                 for rank, (score, row) in enumerate(zip(found_scores, found_rows, strict=True), start=1) if row >= 0]
                for found_scores, found_rows in zip(scores.tolist(), rows.tolist(), strict=True)]

    def query_warnings(self, query_modality: str, query: Any) -> list[str]:
        """What the query's encoder says about this query (e.g. most words unknown to it); ``[]`` when nothing."""
        encoder = self.model.encoders[query_modality] if query_modality in self.model.encoders else None
        notes = getattr(encoder, "query_warnings", None)  # optional: an encoder need not subclass xmcore's Encoder
        return [str(n) for n in notes(query)] if notes else []

    def describe(self) -> dict[str, Any]:
        return {m: {"count": e["count"], "index": e["index"]["type"]} for m, e in self.manifest["modalities"].items()}

    def preprocessing(self) -> dict[str, str]:
        """Each encoder's preprocessing as the manifest records it (an index built before it was recorded:
        as the stored model rebuilds it)."""
        recorded = self.manifest["model"].get("preprocessing")
        return dict(recorded) if recorded else {m: repr(e.preprocessor) for m, e in self.model.encoders.items()}


def results_table(results: Sequence[dict[str, Any]]) -> str:
    lines = ["| rank | score | id | item | label |", "|---:|---:|---|---|---|"]
    for r in results:
        what = r.get("caption") or r.get("path") or r.get("media") or r.get("source", "")
        what = what.replace("|", "\\|")
        lines.append(f"| {r['rank']} | {r['score']:.4f} | {r['id']} | {what} | {r.get('label', '')} |")
    return "\n".join(lines) + "\n"

