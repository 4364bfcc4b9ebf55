"""Words of a text: captum's LayerIntegratedGradients at the text encoder's word-embedding layer.

From a baseline where every token of the text is the padding token (special tokens such as [CLS] kept),
to the text; each token's attribution is the sum over its embedding's dimensions, and a word's the sum
over its tokens (sub-word pieces included: :func:`xmcore.explain.to_words`).  The encoder opts in by
exposing ``word_embeddings`` and ``token_view`` (see :class:`xmcore.components.Encoder`).
"""

from __future__ import annotations

import numpy as np
import torch
from captum.attr import LayerIntegratedGradients

from xmcore.errors import XmcoreError
from xmcore.explain import Explanation, to_words


def word_integrated_gradients(model, modality: str, text: str, target: torch.Tensor, steps: int, batch: int) -> Explanation:
    encoder = model.encoder(modality)
    layer = getattr(encoder, "word_embeddings", None)
    if layer is None:
        raise XmcoreError(f"integrated-gradients: the {modality} encoder ({type(encoder).__name__}) does not say which "
                          "layer embeds its tokens (word_embeddings and token_view, see xmcore.components.Encoder), "
                          "so its words cannot be attributed")
    view = encoder.token_view(text)
    ids = view.batch[view.ids_key]
    baseline = ids.clone()
    for position, span in enumerate(view.spans):
        if span is not None:
            baseline[0, position] = view.baseline_id

    def forward(token_ids: torch.Tensor) -> torch.Tensor:
        rows = token_ids.shape[0]
        inputs = {key: value.expand(rows, *value.shape[1:]) if torch.is_tensor(value) and value.shape[:1] == (1,) else value
                  for key, value in view.batch.items()}
        inputs[view.ids_key] = token_ids
        return (model.embed(modality, inputs) * target).sum(-1)

    attributions, delta = LayerIntegratedGradients(forward, layer).attribute(
        ids, baselines=baseline, n_steps=steps, internal_batch_size=batch, return_convergence_delta=True)
    per_token = attributions.sum(-1)[0].detach().float().tolist()
    words = to_words(text, view.spans, per_token)
    with torch.no_grad():
        score = float(forward(ids)[0])
    return Explanation(modality, score, np.array([w.attribution for w in words], dtype=np.float32), words=words,
                       details={"steps": steps, "tokens": len(view.spans), "convergence_delta": float(delta.abs().max())})
