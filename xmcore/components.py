"""Base classes for the components plugins build: encoders and fusion strategies.

Plugins subclass these (or follow the same shape); the core relies on nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn


class Preprocessor:
    """Turns raw items into model input.  Must be picklable: it runs in DataLoader workers.

    ``__call__`` handles one raw item (in a worker); ``collate`` stacks a list of
    results into a batch.  The default collate stacks tensors.
    """

    def __call__(self, item: Any) -> Any:
        return item

    def collate(self, items: Sequence[Any]) -> Any:
        return torch.stack(list(items))

    def __repr__(self) -> str:
        """Describes the preprocessing exactly: it is part of the feature cache's key."""
        return type(self).__name__

    def input_box(self, size: tuple[int, int]) -> tuple[float, float, float, float] | None:
        """For pictures, so that an explanation's map lands on the right pixels: the part of a raw picture
        of ``size`` (width, height) that the model's input shows (after resizing and cropping), as
        ``(left, top, right, bottom)`` in the picture's pixels.  ``None``: the whole picture, resized."""
        return None


@dataclass
class TokenView:
    """One text as a text encoder reads it, for attributions to its words (``xmcore explain``)."""

    batch: Any  # the encoder's input for this one text (what its preprocessor's collate returns)
    ids_key: str  # the entry of ``batch`` that holds the token ids, shape [1, tokens]
    spans: list[tuple[int, int] | None]  # per token: the characters of the text it was read from; None: added by the tokenizer
    baseline_id: int  # a token id that means nothing (padding): the reference the attributions start from


class Encoder(nn.Module):
    """Encodes a batch of one modality into ``output_dim``-wide features."""

    output_dim: int
    preprocessor: Preprocessor

    def forward(self, batch: Any) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def export(self, folder: Path) -> dict[str, Any]:
        """Make a search index self-contained: write into ``folder`` what a rebuild needs besides
        the state dict (a tokenizer, a model configuration) and return the parameter values that
        make the rebuild read it from there (paths relative to ``folder``'s parent), or that stop
        it from fetching weights the state dict replaces anyway.  Default: nothing to write."""
        return {}

    read_query: Any = None
    """Optional: ``read_query(file)`` turns an open binary file (``xmcore search --<modality> FILE``, an upload
    to ``xmcore serve``) into a raw item of this encoder's modality, and raises
    :class:`xmcore.errors.QueryError` saying why a file cannot be used (unreadable, too large, too long).
    ``None``: this encoder reads no query files (images need none: the core reads them with PIL)."""

    def query_warnings(self, item: Any) -> list[str]:
        """Notes for a user about one raw query item, said beside its search results: for example that
        most of a text's words are unknown to the model, so the results mean little.  Default: none."""
        return []

    word_embeddings: Any = None
    """Optional, for attributions to words (``xmcore explain``): a property returning the module that gives
    each token its vector (an ``nn.Embedding`` already among the encoder's submodules: a property, so that
    the state dict does not hold it twice), at whose output the attributions are taken; with it,
    ``token_view(text)`` returns the :class:`TokenView` of one text.  ``None``: this encoder's inputs
    cannot be attributed to words."""

    def token_view(self, text: str) -> TokenView:
        raise NotImplementedError(f"{type(self).__name__} does not map its tokens back to the text's characters")


class Fusion(nn.Module):
    """Maps each modality's encoder features into the common space."""

    def forward(self, features: torch.Tensor, modality: str) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def auxiliary_loss(
        self, embeddings: Mapping[str, torch.Tensor], progress: float
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """An extra training objective (and values to log); ``progress`` runs 0 -> 1 over training."""
        return None, {}
