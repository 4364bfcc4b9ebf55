"""Word embeddings + LSTM: the text encoder of the seed article's pipeline.

Recurrent caption encoders of this kind are the text side of the early
cross-modal embedding models (Kiros et al., "Unifying Visual-Semantic Embeddings
with Multimodal Neural Language Models", 2014; VSE++, Faghri et al. 2018).  The
vocabulary is built from the training captions and stored in the module's
state, so a checkpoint carries it.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from typing import Iterable, Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from xmcore.components import Encoder, Preprocessor, TokenView
from xmcore.errors import XmcoreError

PAD, UNK = "<pad>", "<unk>"
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class Vocabulary:
    def __init__(self, words: Sequence[str]):
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, texts: Iterable[str], min_freq: int = 1) -> "Vocabulary":
        counts = Counter(w for t in texts for w in tokenize(t))
        kept = sorted(w for w, c in counts.items() if c >= min_freq)
        return cls([PAD, UNK, *kept])

    def encode(self, text: str, max_length: int) -> list[int]:
        unk = self.index[UNK]
        ids = [self.index.get(w, unk) for w in tokenize(text)[:max_length]]
        return ids or [unk]  # an empty caption still yields one step

    def __len__(self) -> int:
        return len(self.words)


class TokenPreprocessor(Preprocessor):
    def __init__(self, vocab: Vocabulary, max_length: int):
        self.vocab = vocab
        self.max_length = max_length

    def __call__(self, text: str) -> list[int]:
        return self.vocab.encode(text, self.max_length)

    def __repr__(self) -> str:
        digest = hashlib.sha256("\n".join(self.vocab.words).encode()).hexdigest()[:16]
        return f"TokenPreprocessor(vocab={len(self.vocab)}:{digest}, max_length={self.max_length})"

    def collate(self, items: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        lengths = [len(ids) for ids in items]
        width = max(lengths)  # padded with <pad> (0) in Python: one tensor made, not one a row
        tokens = torch.tensor([[*ids, *[0] * (width - len(ids))] for ids in items], dtype=torch.long)
        return {"tokens": tokens, "lengths": torch.tensor(lengths, dtype=torch.long)}


def read_word_vectors(path: str, vocab: Vocabulary, dim: int) -> tuple[torch.Tensor, int]:
    """Rows of a GloVe-format file for the vocabulary's words; returns (vectors, words found)."""
    weight = torch.randn(len(vocab), dim) * 0.1
    found = 0
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                word, *values = line.rstrip().split(" ")
                if word not in vocab.index:
                    continue
                if len(values) != dim:
                    raise XmcoreError(
                        f"encoders.text.word_vectors: {path} line {lineno} has {len(values)} values; "
                        f"expected embed_dim={dim} (set embed_dim to the file's width)"
                    )
                weight[vocab.index[word]] = torch.tensor([float(v) for v in values])
                found += 1
    except FileNotFoundError:
        raise XmcoreError(f"encoders.text.word_vectors: no such file {path}") from None
    return weight, found


class LSTMEncoder(Encoder):
    def __init__(
        self,
        vocab: Vocabulary,
        embed_dim: int = 128,
        hidden: int = 256,
        layers: int = 1,
        bidirectional: bool = True,
        pooling: str = "mean",
        dropout: float = 0.0,
        max_length: int = 64,
        word_vectors: str | None = None,
    ):
        super().__init__()
        self.vocab = vocab
        self.embedding = nn.Embedding(len(vocab), embed_dim, padding_idx=0)
        if word_vectors:
            weight, self.words_initialised = read_word_vectors(word_vectors, vocab, embed_dim)
            self.embedding.weight.data.copy_(weight)
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional)
        self.pooling = pooling
        self.output_dim = hidden * (2 if bidirectional else 1)
        self.preprocessor = TokenPreprocessor(vocab, max_length)
        self.register_load_state_dict_pre_hook(_adopt_checkpoint_vocabulary)

    def export(self, folder):
        """Vocabulary and word vectors travel in the state dict: no GloVe file is read on a rebuild."""
        return {"word_vectors": None}

    def query_warnings(self, text: str) -> list[str]:
        """Say when the model cannot read most of a query: its words are only those of the training captions."""
        words = tokenize(str(text))
        known = len(self.vocab) - 2  # <pad>, <unk>
        if not words:
            return [f"the query has no words the text model can read (it reads only the {known} words of its "
                    "training captions); these results mean nothing"]
        unknown = [w for w in words if w not in self.vocab.index]
        notes = []
        if len(unknown) * 2 > len(words):
            shown = ", ".join(dict.fromkeys(unknown[:5]))
            notes.append(f"{len(unknown)} of the query's {len(words)} words are unknown to the text model ({shown}); "
                         f"it knows only the {known} words of its training captions, so these results mean little")
        limit = self.preprocessor.max_length
        if len(words) > limit:
            notes.append(f"the text model reads only the first {limit} words of a query; the other {len(words) - limit} were ignored")
        return notes

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.embedding

    def token_view(self, text: str) -> TokenView:
        """The tokens the model reads (one per word, up to ``max_length``) with the characters each came from."""
        lowered = text.lower()
        # lower() keeps positions unless a character lowers to several (rare letters outside ASCII)
        source, flags = (lowered, 0) if len(lowered) == len(text) else (text, re.IGNORECASE)
        spans = [m.span() for m in re.finditer(_WORD.pattern, source, flags)][: self.preprocessor.max_length]
        ids = self.preprocessor(text)
        if len(spans) != len(ids):  # no words: the model reads one <unk> that stands for nothing in the text
            spans = [None] * len(ids)
        return TokenView(self.preprocessor.collate([ids]), "tokens", spans, baseline_id=self.vocab.index[PAD])

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens, lengths = batch["tokens"], batch["lengths"]
        x = self.dropout(self.embedding(tokens))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, (h, _) = self.lstm(packed)
        if self.pooling == "last":
            if self.lstm.bidirectional:
                return torch.cat([h[-2], h[-1]], dim=-1)
            return h[-1]
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])
        mask = (torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths.to(tokens.device)[:, None])
        mask = mask.unsqueeze(-1)
        if self.pooling == "max":
            return out.masked_fill(~mask, float("-inf")).amax(dim=1)
        return (out * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)

    # The vocabulary travels in the state dict, so a checkpoint is self-contained.
    def get_extra_state(self):
        return {"vocab": self.vocab.words}

    def set_extra_state(self, state) -> None:
        self.vocab = Vocabulary(list(state["vocab"]))
        self.preprocessor = TokenPreprocessor(self.vocab, self.preprocessor.max_length)


def _adopt_checkpoint_vocabulary(module: LSTMEncoder, state_dict, prefix, *args) -> None:
    """Before weights load, size the embedding to the checkpoint's vocabulary, so a checkpoint loads
    into an encoder built on any captions (evaluating on other data, serving)."""
    extra = state_dict.get(prefix + "_extra_state")
    if not extra or "vocab" not in extra:
        return
    words = list(extra["vocab"])
    if len(words) != module.embedding.num_embeddings:
        old = module.embedding
        module.embedding = nn.Embedding(len(words), old.embedding_dim, padding_idx=0).to(old.weight.device)
    module.set_extra_state(extra)
