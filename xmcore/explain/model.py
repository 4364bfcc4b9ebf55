"""The trained model an explanation runs: rebuilt from a run directory or from an index folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from xmcore.errors import XmcoreError


class ExplainModel:
    """A trained model's encoders and fusion, in evaluation mode, for explainers.

    Every call runs the real encoder on the raw item (frozen-feature caches never stand in), with
    autograd on, so a method may take gradients at the input or at any layer."""

    def __init__(self, encoders: Mapping[str, Any], fusion, source: str = ""):
        import torch

        self.encoders = dict(encoders)
        self.fusion = fusion
        self.source = source
        for module in (*self.encoders.values(), fusion):
            module.eval()
            # Attributions take gradients with respect to inputs and layer outputs; no weight needs one.
            module.requires_grad_(False)
        self._torch = torch

    @property
    def modalities(self) -> list[str]:
        return list(self.encoders)

    def encoder(self, modality: str):
        if modality not in self.encoders:
            raise XmcoreError(f"{self.source or 'the model'}: no '{modality}' encoder; it has: {', '.join(self.encoders)}")
        return self.encoders[modality]

    def batch(self, modality: str, item: Any) -> Any:
        """One raw item as its encoder's input (a batch of one), preprocessed exactly as for retrieval."""
        from xmcore.data import materialize

        pre = self.encoder(modality).preprocessor
        return pre.collate([pre(materialize(item))])

    def embed(self, modality: str, batch: Any):
        """L2-normalised common-space embeddings of an encoder batch, with the autograd graph kept."""
        return self.project(modality, self.encoder(modality)(batch))

    def project(self, modality: str, features):
        """L2-normalised common-space embeddings of encoder features (``[n, output_dim]``): for a method that
        runs the encoder in its own way (on an input it changed inside the encoder, say)."""
        return self._torch.nn.functional.normalize(self.fusion(features, modality).float(), dim=-1)

    def target(self, modality: str, item: Any):
        """The fixed embedding (``[1, dim]``, no graph) of one raw item: the other side of an explained pair."""
        with self._torch.no_grad():
            return self.embed(modality, self.batch(modality, item))

    def score(self, modality: str, item: Any, target) -> float:
        """The cosine between one raw item's embedding and ``target``."""
        with self._torch.no_grad():
            return float((self.embed(modality, self.batch(modality, item)) * target).sum())


def load_model(path: Path, plugins) -> ExplainModel:
    """The model of a run directory (its best checkpoint, rebuilt as ``xmcore evaluate`` does) or of an index
    folder (the model stored in it, checked against the manifest's checksums)."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        return _index_model(path, plugins)
    if (path / "recipe.yaml").is_file():
        return _run_model(path, plugins)
    if not path.exists():
        raise XmcoreError(f"{path}: no such folder; give a run directory (`xmcore run`) or an index folder (`xmcore index`)")
    raise XmcoreError(f"{path}: neither a run directory (no recipe.yaml) nor an index folder (no manifest.json); "
                      "give a folder written by `xmcore run` or `xmcore index`")


def _run_model(run_dir: Path, plugins) -> ExplainModel:
    from xmcore.run import best_checkpoint, rebuild_trained

    checkpoint = best_checkpoint(run_dir)
    _, _, module, _ = rebuild_trained(run_dir, checkpoint, [], plugins, None, "explain")
    return ExplainModel(dict(module.encoders), module.fusion, f"{run_dir} ({checkpoint.name})")


def _index_model(index_dir: Path, plugins) -> ExplainModel:
    from xmcore.search import QueryModel, read_manifest, verify

    manifest = read_manifest(index_dir)
    bad = [rel for rel in verify(index_dir, manifest, embeddings=False) if rel.startswith("model/")]
    if bad:
        raise XmcoreError(f"{index_dir}: the stored model differs from the manifest ({', '.join(bad[:5])}); "
                          "rebuild the index with `xmcore index`")
    query = QueryModel(index_dir / "model", plugins)
    return ExplainModel(dict(query.encoders), query.fusion, f"{index_dir} (its stored model)")
