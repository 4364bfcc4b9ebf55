"""A sentence-transformers model as an xmcore text encoder (N. Reimers & I. Gurevych, Sentence-BERT, EMNLP 2019)."""

from __future__ import annotations

from typing import Sequence

import torch

from xmcore.components import Encoder, Preprocessor, TokenView
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

    @property
    def word_embeddings(self) -> torch.nn.Module:
        embeddings = getattr(getattr(self.model[0], "auto_model", None), "embeddings", None)
        layer = getattr(embeddings, "word_embeddings", None)
        if layer is None:
            raise XmcoreError("this sentence-transformers model has no word-embedding layer where BERT-like models "
                              "keep it (auto_model.embeddings.word_embeddings); its words cannot be attributed")
        return layer

    def token_view(self, text: str) -> TokenView:
        """The word pieces the model reads, each with the characters of ``text`` it came from (the tokenizer's
        offsets); the special tokens ([CLS], [SEP]) come from no character."""
        tokenizer = self.preprocessor.tokenizer
        if not getattr(tokenizer, "is_fast", False):
            raise XmcoreError(f"the tokenizer of {tokenizer.name_or_path!r} is not a fast tokenizer: it gives no "
                              "character offsets, so word pieces cannot be mapped back to words")
        batch = dict(tokenizer([text], truncation=True, max_length=self.preprocessor.max_length,
                               return_offsets_mapping=True, return_special_tokens_mask=True, return_tensors="pt"))
        offsets = batch.pop("offset_mapping")[0].tolist()
        special = batch.pop("special_tokens_mask")[0].tolist()
        spans = [None if is_special else (int(a), int(b)) for (a, b), is_special in zip(offsets, special)]
        return TokenView(batch, "input_ids", spans, baseline_id=int(tokenizer.pad_token_id))

    def export(self, folder):
        """The model folder (configuration, tokenizer, weights) so queries never need the original path or a hub."""
        self.model.save(str(folder))
        return {"model": folder.name}
