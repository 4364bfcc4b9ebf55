"""Audio augmentations (recipe section ``augment.audio``): gain, noise, time shift, speed, pitch, reverb, masks.

Each takes a raw training :class:`~xmcore_audio.items.Clip` and returns one at the same rate; like
every augmentation they run on training pairs only, so evaluation and indexing stay deterministic.
Speed perturbation follows T. Ko et al., "Audio Augmentation for Speech Recognition", Interspeech 2015;
``spec-augment`` follows D. S. Park et al., "SpecAugment", Interspeech 2019 (see
:class:`xmcore_audio.effects.SpecAugment` for why it masks the clip rather than the encoder's features).
The signal processing is in :mod:`xmcore_audio.effects`, imported only when a recipe builds one.

Mind the captions, as with image flips: a pitch shift of an octave turns a "low beep" into a higher one,
``speed`` moves pitch too unless ``keep_pitch``, and a time shift or mask can cut or reorder events.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

import xmcore


def _range(above: float | None = None, at_least: float | None = None, at_most: float | None = None):
    """A ``[low, high]`` parameter, ordered and within bounds (one plain type for ``xmcore plugins``)."""

    def check(bounds: tuple[float, float]) -> tuple[float, float]:
        if bounds[0] > bounds[1]:
            raise ValueError(f"{list(bounds)} is not a range: write [low, high] with low <= high")
        if above is not None and bounds[0] <= above:
            raise ValueError(f"{list(bounds)}: both ends must exceed {above}")
        if at_least is not None and bounds[0] < at_least:
            raise ValueError(f"{list(bounds)}: both ends must be at least {at_least}")
        if at_most is not None and bounds[1] > at_most:
            raise ValueError(f"{list(bounds)}: both ends must be at most {at_most}")
        return bounds

    return Annotated[tuple[float, float], AfterValidator(check)]


Range = _range()


class Prob(xmcore.Params):
    p: float = Field(0.5, ge=0, le=1, description="probability of applying the augmentation to a clip")


class GainParams(Prob):
    gain_db: Range = Field((-6.0, 6.0), description="range of the gain drawn per clip (dB; +6 dB doubles the amplitude)")


class NoiseParams(Prob):
    snr_db: Range = Field(
        (10.0, 30.0), description="range of the signal-to-noise ratio drawn per clip (dB, over the whole clip)"
    )
    color: Literal["white", "pink"] | None = Field(None, description="synthetic noise: white or pink (default white)")
    folder: xmcore.RecipePath | None = Field(
        None, description="instead of synthetic noise: a folder of noise clips (any format soundfile reads, "
        "searched recursively), a random stretch of one added per clip"
    )

    @model_validator(mode="after")
    def _one_source(self):
        if self.color is not None and self.folder is not None:
            raise ValueError("give either color (synthetic noise) or folder (noise clips), not both")
        return self


class TimeShiftParams(Prob):
    shift_s: Range = Field(
        (-0.1, 0.1), description="range of the shift drawn per clip (s; positive: later, negative: earlier)"
    )
    mode: Literal["circular", "pad"] = Field(
        "pad", description="pad: silence fills the gap and what passes the end is dropped; circular: the clip rotates"
    )


class SpeedParams(Prob):
    factor: _range(at_least=0.1, at_most=10) = Field(
        (0.9, 1.1), description="range of the playback speed factor drawn per clip (1.5: 1.5x faster and shorter); "
        "rounded to hundredths"
    )
    keep_pitch: bool = Field(
        False, description="false: pitch moves with speed (Ko et al. 2015); true: a tempo change at the same pitch "
        "(phase vocoder)"
    )


class PitchShiftParams(Prob):
    semitones: _range(at_least=-24, at_most=24) = Field(
        (-2.0, 2.0), description="range of the pitch shift drawn per clip (semitones; 12: an octave; at most 24 either way)"
    )


class ReverbParams(Prob):
    rt60: _range(above=0) = Field(
        (0.2, 0.8), description="range of the room's reverberation time drawn per clip (s for a 60 dB decay)"
    )
    drr_db: Range = Field(
        (0.0, 10.0), description="range of the direct-to-reverberant energy ratio drawn per clip (dB; lower: wetter)"
    )


class SpecAugmentParams(Prob):
    freq_masks: int = Field(2, ge=0, description="frequency masks per clip")
    freq_width: _range(at_least=0, at_most=1) = Field(
        (0.0, 0.15), description="range of a frequency mask's width, as a share of the mel scale from 0 Hz to Nyquist"
    )
    time_masks: int = Field(2, ge=0, description="time masks per clip")
    time_width_s: _range(at_least=0) = Field(
        (0.0, 0.1), description="range of a time mask's width (s)"
    )
    win_ms: float = Field(32.0, gt=0, description="STFT window in which the masks are cut (ms)")


def build_gain(params: GainParams, ctx: xmcore.BuildContext):
    """Louder or softer by a random gain in dB (torchaudio gain)."""
    from xmcore_audio.effects import Gain

    return Gain(params.p, params.gain_db)


def build_noise(params: NoiseParams, ctx: xmcore.BuildContext):
    """Add white, pink or recorded noise at a random signal-to-noise ratio (torchaudio add_noise)."""
    from xmcore_audio.effects import Noise, NoiseFolder

    folder = NoiseFolder(ctx.path(params.folder), "augment.audio noise.folder") if params.folder else None
    return Noise(params.p, params.snr_db, params.color or "white", folder)


def build_time_shift(params: TimeShiftParams, ctx: xmcore.BuildContext):
    """Shift the clip in time by a random amount, padded with silence or circular."""
    from xmcore_audio.effects import TimeShift

    return TimeShift(params.p, params.shift_s, params.mode)


def build_speed(params: SpeedParams, ctx: xmcore.BuildContext):
    """Play faster or slower by a random factor (speed perturbation; torchaudio resample or phase vocoder)."""
    from xmcore_audio.effects import Speed

    return Speed(params.p, params.factor, params.keep_pitch)


def build_pitch_shift(params: PitchShiftParams, ctx: xmcore.BuildContext):
    """Shift the pitch by random semitones, keeping the length (torchaudio phase vocoder + resample)."""
    from xmcore_audio.effects import PitchShift

    return PitchShift(params.p, params.semitones)


def build_reverb(params: ReverbParams, ctx: xmcore.BuildContext):
    """Convolve with a synthetic exponentially decaying room response (torchaudio fftconvolve)."""
    from xmcore_audio.effects import Reverb

    return Reverb(params.p, params.rt60, params.drr_db)


def build_spec_augment(params: SpecAugmentParams, ctx: xmcore.BuildContext):
    """SpecAugment frequency and time masks, cut into the clip's spectrum and resynthesised."""
    from xmcore_audio.effects import SpecAugment

    return SpecAugment(params.p, params.freq_masks, params.freq_width, params.time_masks, params.time_width_s,
                       params.win_ms)


def _test_clips(n: int) -> list:
    from xmcore_audio import sample_clips

    return sample_clips(n)


_AUGMENTATIONS = [
    ("gain", build_gain, GainParams),
    ("noise", build_noise, NoiseParams),
    ("time-shift", build_time_shift, TimeShiftParams),
    ("speed", build_speed, SpeedParams),
    ("pitch-shift", build_pitch_shift, PitchShiftParams),
    ("reverb", build_reverb, ReverbParams),
    ("spec-augment", build_spec_augment, SpecAugmentParams),
]


@xmcore.hookimpl
def xmcore_register_augmentations(register):
    for name, build, params in _AUGMENTATIONS:
        register(name, build, params=params, modalities=["audio"], test_params={"p": 1.0}, test_items=_test_clips)
