"""A sentence-transformers model as an xmcore text encoder (N. Reimers & I. Gurevych, Sentence-BERT, EMNLP 2019)."""

from __future__ import annotations

from typing import Sequence

import torch

from xmcore.components import Encoder, Preprocessor
from xmcore.errors import XmcoreError


class TokenizerPreprocessor(Preprocessor):
    """Tokenises in the collate step with the model's own (picklable) tokenizer."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, text: str) -> str:
        return text

    def __repr__(self) -> str:
        return f"TokenizerPreprocessor({self.tokenizer.name_or_path!r}, vocab={len(self.tokenizer)}, max_length={self.max_length})"

    def collate(self, items: Sequence[str]) -> dict[str, torch.Tensor]:
        return dict(
            self.tokenizer(list(items), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        )


class SentenceTransformerEncoder(Encoder):
    def __init__(self, model: str, max_seq_length: int | None = None):
        super().__init__()
        from sentence_transformers import SentenceTransformer

        try:
            self.model = SentenceTransformer(model, device="cpu")
        except (OSError, ValueError) as exc:
            raise XmcoreError(
                f"encoders.text.model: cannot load sentence-transformers model '{model}' "
                f"({type(exc).__name__}: {str(exc).splitlines()[0]}); give a local model folder, "
                "or a hub name that is in the local cache"
            ) from None
        if max_seq_length is not None:
            self.model.max_seq_length = max_seq_length
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.output_dim = int(dimension())
        first = self.model[0]
        self.preprocessor = TokenizerPreprocessor(first.tokenizer, self.model.max_seq_length)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(dict(features))["sentence_embedding"]

    def export(self, folder):
        """The model folder (configuration, tokenizer, weights) so queries never need the original path or a hub."""
        self.model.save(str(folder))
        return {"model": folder.name}
