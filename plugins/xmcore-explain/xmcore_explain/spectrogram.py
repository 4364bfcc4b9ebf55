"""Occlusion over a time x frequency input: which moments and which bands of a sound make it match.

The same method as for pictures (captum's ``Occlusion``, Zeiler & Fergus 2014), slid over the
log-mel spectrogram the encoder reads instead of over pixels: a patch of ``side`` bands by ``side``
frames is hidden (set to the spectrogram's mean level) and the drop of the cosine with the fixed
``target`` is each place's attribution.

An encoder opts in by exposing two methods (``audio-cnn`` of xmcore-audio does):

* ``spectrogram(batch) -> (Tensor[bands, frames], canvas)``: the input of a batch of one item as one
  2-D map, and the keyword arguments of :class:`xmcore.explain.Canvas` (extent, axis labels) to draw it;
* ``from_spectrogram(Tensor[n, bands, frames], batch) -> Tensor[n, output_dim]``: the encoder's features
  of ``n`` changed versions of that map, computed as for the item itself.
"""

from __future__ import annotations

from typing import Any

import torch
from captum.attr import Occlusion as CaptumOcclusion

from xmcore.errors import XmcoreError
from xmcore.explain import Canvas, Explanation


def has_spectrogram(encoder) -> bool:
    return callable(getattr(encoder, "spectrogram", None)) and callable(getattr(encoder, "from_spectrogram", None))


def occlude_spectrogram(model, modality: str, item: Any, target: torch.Tensor, window: float, stride: float,
                        batch_size: int, fill: str) -> Explanation:
    encoder = model.encoder(modality)
    if not has_spectrogram(encoder):
        raise XmcoreError(f"occlusion: the {modality} encoder ({type(encoder).__name__}) is neither a picture model nor "
                          "one that shows its time x frequency input (spectrogram and from_spectrogram, see "
                          "xmcore_explain.spectrogram), so there is nothing to slide a patch over")
    batch = model.batch(modality, item)
    with torch.no_grad():
        values, canvas = encoder.spectrogram(batch)
    values = values.detach().float()
    bands, frames = values.shape
    side = max(1, round(window * min(bands, frames)))
    step = max(1, round(side * stride))

    def forward(spectrograms: torch.Tensor) -> torch.Tensor:
        return (model.project(modality, encoder.from_spectrogram(spectrograms, batch)) * target).sum(-1)

    # "mean": the spectrogram's mean level, as a picture's mean colour.  Not its lowest value (silence at the dB
    # floor): that lies far below a recording's noise floor, so hiding quiet places changed the score as much as
    # hiding a sound (named beep's region: 0.33 of two-beep clips against 0.63 with the mean, bench/explain.py)
    baseline = float(values.mean()) if fill == "mean" else 0.0
    with torch.no_grad():
        drop = CaptumOcclusion(forward).attribute(values[None], sliding_window_shapes=(side, side), strides=(step, step),
                                                  baselines=baseline, perturbations_per_eval=batch_size)
        score = float(forward(values[None])[0])
    return Explanation(modality, score, drop[0].numpy(), canvas=Canvas(values.numpy(), **canvas),
                       details={"window": side, "stride": step, "fill": fill})
