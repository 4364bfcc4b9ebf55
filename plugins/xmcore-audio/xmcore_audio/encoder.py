"""``audio-cnn``: a log-mel spectrogram into a timm CNN with one input channel, globally pooled.

The image models that AST and PANNs start from read spectrograms as pictures;
here any timm CNN does (``in_chans=1``).  The front end runs in the
preprocessor (a DataLoader worker): resample to the encoder's rate
(a ``torchaudio.transforms.Resample`` kept per source rate: its sinc kernel is
built once, not for every clip as ``torchaudio.functional.resample`` does; built
in float32 as the functional builds it for float32 clips, it gives the same
samples), cut into windows of ``max_seconds``, and
turn each window into a log-mel spectrogram (``torchaudio.transforms``
``MelSpectrogram`` + ``AmplitudeToDB``).

Nothing is cut silently and nothing depends on the batch: every window is
exactly ``max_seconds`` long (the last one, or a shorter clip, padded with
silence), each window is embedded on its own, and a clip's embedding is the
average of its windows' embeddings weighted by how much of each window is the
clip (a 4.5 s clip with 4 s windows: 4/4.5 and 0.5/4.5).  There is no random crop
anywhere, so evaluation and indexing are deterministic.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import timm
import torch

from xmcore.components import Encoder, Preprocessor
from xmcore.errors import XmcoreError
from xmcore_audio.items import Clip

DB_SCALE = 20.0  # log-mel dB / DB_SCALE: inputs of order one for a CNN trained from scratch


class LogMelPreprocessor(Preprocessor):
    """A clip -> its windows' log-mel spectrograms ``[W, n_mels, frames]`` and weights ``[W]``."""

    def __init__(self, sample_rate: int, n_mels: int, win_ms: float, hop_ms: float, f_min: float, f_max: float | None,
                 max_seconds: float, top_db: float = 80.0):
        self.sample_rate = int(sample_rate)
        self.n_mels = int(n_mels)
        self.win_ms = float(win_ms)
        self.hop_ms = float(hop_ms)
        self.f_min = float(f_min)
        self.f_max = float(f_max) if f_max is not None else self.sample_rate / 2
        self.max_seconds = float(max_seconds)
        self.top_db = float(top_db)
        self.win_length = int(round(self.sample_rate * self.win_ms / 1000))
        self.hop_length = int(round(self.sample_rate * self.hop_ms / 1000))
        self.n_fft = 1 << max(0, math.ceil(math.log2(self.win_length)))
        self.window_samples = int(round(self.sample_rate * self.max_seconds))
        self._mel = None  # built lazily in each process: a plain, picklable description travels to workers
        self._resamplers: dict[int, Any] = {}  # source rate -> torchaudio.transforms.Resample, likewise

    @property
    def frames(self) -> int:
        return self.window_samples // self.hop_length + 1

    def _transforms(self):
        if self._mel is None:
            import torchaudio

            self._mel = torch.nn.Sequential(
                torchaudio.transforms.MelSpectrogram(
                    sample_rate=self.sample_rate, n_fft=self.n_fft, win_length=self.win_length,
                    hop_length=self.hop_length, f_min=self.f_min, f_max=self.f_max, n_mels=self.n_mels,
                    power=2.0, center=True,
                ),
                torchaudio.transforms.AmplitudeToDB(stype="power", top_db=self.top_db),
            )
        return self._mel

    def __getstate__(self):
        return self.__dict__ | {"_mel": None, "_resamplers": {}}

    def resampler(self, rate: int):
        """The transform from ``rate`` to the encoder's rate, made on first use of ``rate`` and kept."""
        rate, kept = int(rate), self.__dict__.setdefault("_resamplers", {})
        if rate not in kept:
            import torchaudio

            # float32: the kernel the functional builds for a float32 clip, so the samples are the same
            kept[rate] = torchaudio.transforms.Resample(rate, self.sample_rate, dtype=torch.float32)
        return kept[rate]

    def waveform(self, clip: Clip) -> torch.Tensor:
        """The clip as mono float32 at the encoder's rate."""
        wave = torch.from_numpy(np.asarray(clip.samples, dtype=np.float32)).reshape(-1)
        if clip.sample_rate != self.sample_rate:
            with torch.no_grad():
                wave = self.resampler(clip.sample_rate)(wave)
        return wave

    def __call__(self, clip: Clip) -> dict[str, torch.Tensor]:
        wave = self.waveform(clip)
        if wave.numel() == 0:
            raise XmcoreError("audio-cnn: a clip without samples (the data check skips those)")
        count = max(1, math.ceil(wave.numel() / self.window_samples))
        padded = torch.zeros(count * self.window_samples)
        padded[: wave.numel()] = wave
        windows = padded.reshape(count, self.window_samples)
        real = torch.clamp(wave.numel() - torch.arange(count) * self.window_samples, max=self.window_samples)
        with torch.no_grad():
            # One window at a time: AmplitudeToDB's top_db floor is then each window's own, whatever shares its call.
            mels = torch.stack([self._transforms()(w) for w in windows]) / DB_SCALE
        return {"mel": mels, "weight": real.float() / self.window_samples}

    def collate(self, items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        counts = [len(x["weight"]) for x in items]
        return {
            "mel": torch.cat([x["mel"] for x in items]).unsqueeze(1),  # [windows, 1, n_mels, frames]
            "weight": torch.cat([x["weight"] for x in items]),
            "clip": torch.repeat_interleave(torch.arange(len(items)), torch.tensor(counts)),
            "clips": torch.tensor(len(items)),
        }

    def __repr__(self) -> str:
        return (
            f"LogMelPreprocessor(sample_rate={self.sample_rate}, n_mels={self.n_mels}, win_ms={self.win_ms}, "
            f"hop_ms={self.hop_ms}, win_length={self.win_length}, hop_length={self.hop_length}, n_fft={self.n_fft}, "
            f"f_min={self.f_min}, f_max={self.f_max}, power=2.0, top_db={self.top_db}, db_scale={DB_SCALE}, "
            f"window_seconds={self.max_seconds}, windows=weighted-mean, resample=torchaudio.functional.resample)"
        )


class AudioCNNEncoder(Encoder):
    max_query_seconds = 120.0  # a longer query file is refused from its header, before it is decoded

    def __init__(self, model_name: str, preprocessor: LogMelPreprocessor, model_kwargs: dict | None = None):
        super().__init__()
        try:
            self.model = timm.create_model(
                model_name, pretrained=False, num_classes=0, in_chans=1, global_pool="avg", **(model_kwargs or {})
            )
        except RuntimeError as exc:
            if "Unknown model" in str(exc):
                raise XmcoreError(
                    f"encoders.audio.model_name: timm has no model '{model_name}' (timm.list_models() lists them)"
                ) from None
            raise
        self.output_dim = int(self.model.num_features)
        self.preprocessor = preprocessor

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        features = self.model(batch["mel"])  # [windows, D]
        weight = batch["weight"].to(features.dtype).unsqueeze(1)
        clips = int(batch["clips"])
        index = batch["clip"].to(features.device)
        total = features.new_zeros(clips, features.shape[1]).index_add_(0, index, features * weight)
        norm = features.new_zeros(clips, 1).index_add_(0, index, weight)
        return total / norm

    # ------------------------------------------------------------------ explanations (xmcore-explain's occlusion)

    def spectrogram(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        """The input of a batch of one clip as one time x frequency map ``[n_mels, frames]``: its windows'
        log-mels side by side, each cut where the clip ends (no padding), and how to draw it (the keyword
        arguments of :class:`xmcore.explain.Canvas` but the background: the extent in seconds and mel bands)."""
        if int(batch["clips"]) != 1:
            raise XmcoreError(f"audio-cnn: spectrogram() reads a batch of one clip, got {int(batch['clips'])}")
        pre = self.preprocessor
        frames = self._real_frames(batch)
        joined = torch.cat([mel[0, :, :n] for mel, n in zip(batch["mel"], frames)], dim=-1)
        seconds = joined.shape[-1] * pre.hop_length / pre.sample_rate
        return joined, {"extent": (0.0, seconds, 0.0, float(pre.n_mels)), "xlabel": "seconds",
                        "ylabel": f"mel band ({pre.f_min:.0f}-{pre.f_max:.0f} Hz)"}

    def from_spectrogram(self, spectrograms: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """Features ``[n, output_dim]`` of ``n`` versions of the batch's one clip, each given as
        :meth:`spectrogram` gives it (``[n, n_mels, frames]``, e.g. with patches hidden): cut back into the
        windows (their padding as the clip's own), then encoded and averaged exactly as :meth:`forward` does."""
        n, frames = spectrograms.shape[0], self._real_frames(batch)
        windows = batch["mel"].expand(n, *batch["mel"].shape).clone()  # [n, windows, 1, n_mels, frames]
        start = 0
        for w, count in enumerate(frames):
            windows[:, w, 0, :, :count] = spectrograms[:, :, start : start + count]
            start += count
        per_version = len(frames)
        versions = {"mel": windows.reshape(n * per_version, *batch["mel"].shape[1:]), "weight": batch["weight"].repeat(n),
                    "clip": torch.arange(n).repeat_interleave(per_version), "clips": torch.tensor(n)}
        return self(versions)

    def _real_frames(self, batch: dict[str, Any]) -> list[int]:
        """Frames of each window of a one-clip batch that hold the clip (the last window's padding left out)."""
        pre = self.preprocessor
        width = batch["mel"].shape[-1]
        return [min(width, int(round(float(w) * pre.window_samples)) // pre.hop_length + 1) for w in batch["weight"]]

    def read_query(self, file) -> Clip:
        """A query file as a clip at its own rate (the preprocessor resamples it), up to ``max_query_seconds``."""
        from xmcore_audio.items import read_clip

        return read_clip(file, self.max_query_seconds)
