"""Audio plugins: the generated datasets ``tones`` and ``spoken-shapes``, and the log-mel encoder ``audio-cnn``.

Audio items are :class:`xmcore_audio.items.Clip` (mono float32 samples and a rate)
or lazy :class:`xmcore_audio.items.AudioFile` (decoded with soundfile, checked
before training like image files).
"""

from __future__ import annotations

from pydantic import Field, model_validator

import xmcore

AUDIO_TEXT = ("audio", "text")  # the modalities `tones` provides, in Split order


class TonesParams(xmcore.Params):
    train: int = Field(2000, gt=0, description="training clips")
    val: int = Field(200, ge=0, description="validation clips (0: no validation split)")
    test: int = Field(200, gt=0, description="test clips")
    sample_rate: int = Field(16000, ge=4000, description="sample rate of the generated clips (Hz)")
    min_events: int = Field(1, ge=1, description="fewest sound events per clip")
    max_events: int = Field(3, ge=1, description="most sound events per clip")
    captions_per_clip: int = Field(5, ge=1, description="captions written for each clip")
    sounds: list[str] = Field(
        ["low beep", "mid beep", "high beep", "rising chirp", "falling chirp", "noise burst", "click train", "buzz",
         "warble"],
        min_length=1,
        description="sound vocabulary (known sounds)",
    )
    lengths: list[str] = Field(["short", "long"], min_length=1, description="event lengths: short and/or long")
    seed: int = Field(0, description="generation seed (independent of the training seed, so data stay fixed)")

    @model_validator(mode="after")
    def _check(self):
        from xmcore_audio.tones import DURATION_S, SOUNDS

        if self.max_events < self.min_events:
            raise ValueError(f"max_events ({self.max_events}) is below min_events ({self.min_events})")
        bad = [s for s in self.sounds if s not in SOUNDS]
        if bad:
            raise ValueError(f"unknown sounds {bad}; known: {', '.join(SOUNDS)}")
        bad = [s for s in self.lengths if s not in DURATION_S]
        if bad:
            raise ValueError(f"unknown lengths {bad}; known: {', '.join(DURATION_S)}")
        return self


def _spoken_shapes_params():
    from xmcore_datasets import ShapesParams

    class SpokenShapesParams(ShapesParams):
        captions_per_image: int = Field(3, ge=1, description="captions written (and spoken) for each image")
        voices: list[str] = Field(
            ["en-us", "en-gb", "en-us+f3", "en-gb+f2", "en-029", "en-gb-scotland+m3"],
            min_length=1,
            description="espeak-ng voices (with +variants) drawn per caption; list them with `espeak-ng --voices=en`",
        )
        speed: tuple[int, int] = Field((140, 190), description="speaking rate range, words per minute")
        pitch: tuple[int, int] = Field((30, 70), description="pitch range, 0-99")
        sample_rate: int = Field(16000, ge=8000, description="rate the speech is stored at (Hz)")
        cache_dir: xmcore.RecipePath | None = Field(
            None, description="folder of the spoken captions (FLAC); default: speech/ beside the feature cache "
            "(~/.cache/xmcore, or $XMCORE_CACHE_DIR's parent)")
        workers: int = Field(2, ge=1, description="espeak-ng processes run at once while synthesising")

        @model_validator(mode="after")
        def _ranges(self):
            for name in ("speed", "pitch"):
                low, high = getattr(self, name)
                if low > high:
                    raise ValueError(f"{name}: the low end ({low}) is above the high end ({high})")
            if not (80 <= self.speed[0] and self.speed[1] <= 450):
                raise ValueError(f"speed {list(self.speed)}: espeak-ng speaks 80 to 450 words per minute")
            if not (0 <= self.pitch[0] and self.pitch[1] <= 99):
                raise ValueError(f"pitch {list(self.pitch)}: espeak-ng's pitch runs from 0 to 99")
            return self

    return SpokenShapesParams


def build_spoken_shapes(params, ctx: xmcore.BuildContext):
    """The shapes pictures and captions, each caption also spoken by espeak-ng (image, text, audio)."""
    from xmcore_audio.spoken_shapes import generate

    return generate(params)


def _spoken_shapes_test_params():
    from xmcore_audio.spoken_shapes import espeak

    if espeak() is None:  # a Debian package; CI installs it
        return None
    return {"train": 8, "val": 4, "test": 4, "image_size": 32, "captions_per_image": 2}


def build_tones(params: TonesParams, ctx: xmcore.BuildContext):
    """Generated clips of 1-3 synthetic sound events in order (beeps, chirps, noise, clicks...) with captions."""
    from xmcore_audio.tones import generate

    return generate(params)


class AudioCNNParams(xmcore.Params):
    model_name: str = Field("test_resnet", description="timm CNN (built with in_chans=1, from scratch)")
    sample_rate: int = Field(16000, ge=1000, description="the encoder's rate (Hz): clips at another rate are resampled")
    n_mels: int = Field(64, ge=8, description="mel bands")
    win_ms: float = Field(25.0, gt=0, description="STFT window (ms)")
    hop_ms: float = Field(10.0, gt=0, description="STFT hop (ms)")
    f_min: float = Field(0.0, ge=0, description="lowest mel frequency (Hz)")
    f_max: float | None = Field(None, gt=0, description="highest mel frequency (Hz); default: half the sample rate")
    max_seconds: float = Field(
        10.0,
        gt=0,
        description="window length (s): a longer clip is split into windows whose embeddings are averaged, "
        "weighted by their share of the clip; a shorter one is padded with silence. Nothing is cut",
    )
    model_kwargs: dict = Field({}, description="extra keyword arguments for timm.create_model (e.g. drop_rate)")

    @model_validator(mode="after")
    def _check(self):
        if self.hop_ms > self.win_ms:
            raise ValueError(f"hop_ms ({self.hop_ms}) exceeds win_ms ({self.win_ms})")
        if self.f_max is not None and self.f_max > self.sample_rate / 2:
            raise ValueError(f"f_max ({self.f_max}) exceeds half the sample rate ({self.sample_rate / 2})")
        if self.f_max is not None and self.f_max <= self.f_min:
            raise ValueError(f"f_max ({self.f_max}) must exceed f_min ({self.f_min})")
        return self


def build_audio_cnn(params: AudioCNNParams, ctx: xmcore.BuildContext):
    """Log-mel spectrogram (torchaudio) into any timm CNN with one input channel, globally pooled."""
    from xmcore_audio.encoder import AudioCNNEncoder, LogMelPreprocessor

    pre = LogMelPreprocessor(
        params.sample_rate, params.n_mels, params.win_ms, params.hop_ms, params.f_min, params.f_max, params.max_seconds
    )
    return AudioCNNEncoder(params.model_name, pre, params.model_kwargs)


def sample_clips(n: int = 3) -> list:
    """Raw audio items for the contract checks: clips of different lengths and rates."""
    import numpy as np

    from xmcore_audio.items import Clip

    rng = np.random.default_rng(0)
    specs = [(0.3, 8000), (1.1, 16000), (0.05, 22050)]
    specs = (specs * (n // len(specs) + 1))[:n]
    return [Clip(rng.normal(0, 0.3, int(s * r)).astype("float32"), r) for s, r in specs]


@xmcore.hookimpl
def xmcore_register_datasets(register):
    register(
        "tones",
        build_tones,
        params=TonesParams,
        modalities=AUDIO_TEXT,
        test_params={"train": 16, "val": 4, "test": 4, "sample_rate": 8000},
    )
    register(
        "spoken-shapes",
        build_spoken_shapes,
        params=_spoken_shapes_params(),
        modalities=("image", "text", "audio"),
        test_params=_spoken_shapes_test_params,
    )


@xmcore.hookimpl
def xmcore_register_encoders(register):
    register(
        "audio-cnn",
        build_audio_cnn,
        params=AudioCNNParams,
        modalities=["audio"],
        test_params={"sample_rate": 8000, "n_mels": 16, "max_seconds": 0.5},
        test_items=sample_clips,
    )
