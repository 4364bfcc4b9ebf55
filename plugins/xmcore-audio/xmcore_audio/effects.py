"""Audio augmentations: :class:`~xmcore_audio.items.Clip` in, ``Clip`` out, at the clip's own rate.

Each augmentation first *draws* its random settings (``draw(clip)``: a dict), then *applies* them
(``apply(clip, **drawn)``), so that a test can see what was drawn and measure that the output
changed by exactly that.  Draws come from Python's ``random`` and torch's global generator, which
Lightning seeds per process and per DataLoader worker, as for the image and text augmentations.

The signal processing is torchaudio's (``gain``, ``add_noise``, ``resample``, ``phase_vocoder``,
``fftconvolve``, ``melscale`` helpers) and torch's STFT; what is written here is only the glue, the
synthetic room response and the pink-noise colouring.  Speed and pitch ratios are rounded to small
fractions because torchaudio's sinc resampler builds a kernel as large as the reduced ratio:
``torchaudio.functional.pitch_shift`` resamples ``int(rate / ratio) -> rate`` unreduced and takes
0.5-16 s per clip at 8-16 kHz (measured), so pitch shifting here is its own two steps -- a phase-vocoder
time stretch and a resampling by a fraction of at most 64 in the denominator.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torchaudio.functional as AF

from xmcore.errors import XmcoreError
from xmcore_audio.items import Clip


def wave_of(clip: Clip) -> torch.Tensor:
    return torch.from_numpy(np.asarray(clip.samples, dtype=np.float32).copy())


def clip_of(wave: torch.Tensor, rate: int) -> Clip:
    return Clip(wave.detach().to(torch.float32).numpy(), rate)


def uniform(bounds: Sequence[float]) -> float:
    low, high = bounds
    return low if low == high else random.uniform(low, high)


def pow2_at_least(n: float) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1.0, n))))


class AudioAugmentation:
    """Apply with probability ``p``: draw the random settings, then apply them."""

    def __init__(self, p: float):
        self.p = p

    def __call__(self, clip: Clip) -> Clip:
        if self.p < 1 and random.random() >= self.p:
            return clip
        return self.apply(clip, **self.draw(clip))

    def draw(self, clip: Clip) -> dict[str, Any]:
        raise NotImplementedError

    def apply(self, clip: Clip, **drawn: Any) -> Clip:
        raise NotImplementedError


# --------------------------------------------------------------------------- level and noise


class Gain(AudioAugmentation):
    def __init__(self, p: float, gain_db: Sequence[float]):
        super().__init__(p)
        self.gain_db = tuple(gain_db)

    def draw(self, clip: Clip) -> dict[str, Any]:
        return {"gain_db": uniform(self.gain_db)}

    def apply(self, clip: Clip, gain_db: float) -> Clip:
        return clip_of(AF.gain(wave_of(clip), gain_db), clip.sample_rate)


def coloured_noise(n: int, color: str) -> torch.Tensor:
    """``n`` samples of white or pink noise (power falling 3 dB per octave), from torch's generator."""
    white = torch.randn(n)
    if color == "white" or n < 2:
        return white
    spectrum = torch.fft.rfft(white)
    bins = torch.arange(spectrum.numel(), dtype=torch.float32)
    spectrum[1:] /= bins[1:].sqrt()  # amplitude ~ 1/sqrt(f): power ~ 1/f
    spectrum[0] = 0
    return torch.fft.irfft(spectrum, n=n)


class NoiseFolder:
    """Noise clips in a folder, read with soundfile a segment at a time (a folder of hours costs no memory)."""

    def __init__(self, folder: Path, key: str):
        import soundfile

        if not folder.is_dir():
            raise XmcoreError(f"{key}: noise folder {folder} does not exist (give a folder of noise clips, or use color)")
        formats = {name.lower() for name in soundfile.available_formats()}
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix[1:].lower() in formats)
        if not files:
            raise XmcoreError(
                f"{key}: noise folder {folder} holds no audio files soundfile reads "
                f"({', '.join(sorted(formats))}); put noise clips there, or use color"
            )
        self.files, self.frames, self.rates, problems = [], [], [], []
        for path in files:
            try:
                info = soundfile.info(str(path))
            except Exception as exc:  # noqa: BLE001 -- libsndfile's errors vary by format
                problems.append(f"{path.name} (unreadable: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
                continue
            if info.frames <= 0:
                problems.append(f"{path.name} (no samples)")
                continue
            self.files.append(path)
            self.frames.append(int(info.frames))
            self.rates.append(int(info.samplerate))
        if problems:
            raise XmcoreError(f"{key}: {len(problems)} noise file(s) in {folder} cannot be used: "
                              f"{', '.join(problems)}; remove or replace them")

    def segment(self, n: int, rate: int) -> torch.Tensor:
        """A random stretch of ``n`` samples at ``rate`` from a random file (repeated when the file is shorter)."""
        import soundfile

        index = random.randrange(len(self.files))
        path, frames, file_rate = self.files[index], self.frames[index], self.rates[index]
        needed = min(frames, math.ceil(n * file_rate / rate) + 1)
        start = random.randrange(frames - needed + 1)
        samples, _ = soundfile.read(str(path), start=start, frames=needed, dtype="float32", always_2d=True)
        noise = torch.from_numpy(samples.mean(axis=1))
        if not torch.isfinite(noise).all():
            raise XmcoreError(f"noise file {path} has non-finite samples; remove or replace it")
        if file_rate != rate:
            noise = AF.resample(noise, file_rate, rate)
        if noise.numel() == 0:
            return torch.zeros(n)
        return noise.repeat(math.ceil(n / noise.numel()))[:n]


class Noise(AudioAugmentation):
    def __init__(self, p: float, snr_db: Sequence[float], color: str = "white", folder: NoiseFolder | None = None):
        super().__init__(p)
        self.snr_db = tuple(snr_db)
        self.color = color
        self.folder = folder

    def draw(self, clip: Clip) -> dict[str, Any]:
        n = len(clip.samples)
        noise = self.folder.segment(n, clip.sample_rate) if self.folder else coloured_noise(n, self.color)
        return {"snr_db": uniform(self.snr_db), "noise": noise}

    def apply(self, clip: Clip, snr_db: float, noise: torch.Tensor) -> Clip:
        if not bool(noise.square().sum() > 0):  # a silent noise segment: adding it adds nothing
            return clip
        wave = wave_of(clip)
        return clip_of(AF.add_noise(wave[None], noise[None], torch.tensor([snr_db]))[0], clip.sample_rate)


# --------------------------------------------------------------------------- time, speed and pitch


class TimeShift(AudioAugmentation):
    """``circular``: the clip rotates (what leaves one end comes in at the other; keep shifts within the
    silence at the ends of a clip whose captions state an order).  ``pad``: the clip moves, silence fills
    the gap, and what moves past the end is dropped."""

    def __init__(self, p: float, shift_s: Sequence[float], mode: str):
        super().__init__(p)
        self.shift_s = tuple(shift_s)
        self.mode = mode

    def draw(self, clip: Clip) -> dict[str, Any]:
        return {"shift_s": uniform(self.shift_s)}

    def apply(self, clip: Clip, shift_s: float) -> Clip:
        wave = wave_of(clip)
        n = wave.numel()
        k = int(round(shift_s * clip.sample_rate))
        if self.mode == "circular":
            return clip_of(torch.roll(wave, k), clip.sample_rate)
        k = max(-n, min(n, k))
        out = torch.zeros_like(wave)
        if k >= 0:
            out[k:] = wave[: n - k]
        else:
            out[: n + k] = wave[-k:]
        return clip_of(out, clip.sample_rate)


def small_fraction(value: float, max_denominator: int) -> Fraction:
    return Fraction(value).limit_denominator(max_denominator)


def resample_by(wave: torch.Tensor, ratio: Fraction) -> torch.Tensor:
    """Play ``wave`` ``ratio`` times faster: what torchaudio's ``speed`` does, the ratio kept small."""
    if ratio == 1:
        return wave
    return AF.resample(wave, ratio.numerator, ratio.denominator)


def stretch(wave: torch.Tensor, rate: int, ratio: Fraction) -> torch.Tensor:
    """``wave`` made ``ratio`` times longer at the same pitch: a phase-vocoder time stretch (torchaudio)."""
    if ratio == 1:
        return wave
    n_fft = pow2_at_least(rate * 0.064)  # 64 ms: 512 samples at 8 kHz, torchaudio's pitch_shift default
    hop = n_fft // 4
    window = torch.hann_window(n_fft)
    spec = torch.stft(wave, n_fft, hop, window=window, center=True, pad_mode="constant", return_complex=True)
    advance = torch.linspace(0, math.pi * hop, spec.shape[-2])[..., None]
    stretched = AF.phase_vocoder(spec, 1 / float(ratio), advance)
    length = int(round(wave.numel() * float(ratio)))
    return torch.istft(stretched, n_fft, hop, window=window, center=True, length=length)


def fit(wave: torch.Tensor, n: int) -> torch.Tensor:
    if wave.numel() >= n:
        return wave[:n]
    return torch.nn.functional.pad(wave, (0, n - wave.numel()))


class Speed(AudioAugmentation):
    """Faster or slower playback; the factor is rounded to hundredths so that the resampling stays small."""

    def __init__(self, p: float, factor: Sequence[float], keep_pitch: bool):
        super().__init__(p)
        self.factor = tuple(factor)
        self.keep_pitch = keep_pitch

    def draw(self, clip: Clip) -> dict[str, Any]:
        return {"factor": Fraction(round(uniform(self.factor) * 100), 100)}

    def apply(self, clip: Clip, factor: Fraction) -> Clip:
        wave = wave_of(clip)
        if self.keep_pitch:
            out = stretch(wave, clip.sample_rate, 1 / Fraction(factor))
        else:
            out = resample_by(wave, Fraction(factor))
        return clip_of(out, clip.sample_rate)


class PitchShift(AudioAugmentation):
    """Shift the pitch, keep the length: stretch in time by the ratio, then play that ratio faster."""

    def __init__(self, p: float, semitones: Sequence[float]):
        super().__init__(p)
        self.semitones = tuple(semitones)

    def draw(self, clip: Clip) -> dict[str, Any]:
        return {"semitones": uniform(self.semitones)}

    def apply(self, clip: Clip, semitones: float) -> Clip:
        ratio = small_fraction(2 ** (semitones / 12), 64)  # within 0.03 semitones of the drawn shift
        wave = wave_of(clip)
        out = resample_by(stretch(wave, clip.sample_rate, ratio), ratio)
        return clip_of(fit(out, wave.numel()), clip.sample_rate)


# --------------------------------------------------------------------------- room


def room_response(rate: int, rt60: float, drr_db: float) -> torch.Tensor:
    """A synthetic room impulse response: the direct sound, then a tail of noise whose energy decays
    by 60 dB in ``rt60`` seconds (Schroeder's exponential decay model), ``drr_db`` below the direct sound."""
    n = max(2, int(round(rt60 * rate)))
    t = torch.arange(n, dtype=torch.float32) / rate
    tail = torch.randn(n) * torch.exp(-3 * math.log(10) * t / rt60)  # amplitude: -60 dB at rt60
    tail[0] = 0
    tail *= 10 ** (-drr_db / 20) / tail.norm().clamp_min(1e-12)
    tail[0] = 1.0  # the direct sound, energy 1
    return tail


class Reverb(AudioAugmentation):
    """Convolve with a synthetic room response; the clip keeps its length and its RMS level."""

    def __init__(self, p: float, rt60: Sequence[float], drr_db: Sequence[float]):
        super().__init__(p)
        self.rt60 = tuple(rt60)
        self.drr_db = tuple(drr_db)

    def draw(self, clip: Clip) -> dict[str, Any]:
        rt60, drr_db = uniform(self.rt60), uniform(self.drr_db)
        return {"rt60": rt60, "drr_db": drr_db, "response": room_response(clip.sample_rate, rt60, drr_db)}

    def apply(self, clip: Clip, rt60: float, drr_db: float, response: torch.Tensor) -> Clip:
        wave = wave_of(clip)
        wet = AF.fftconvolve(wave, response)[: wave.numel()]
        level = wave.norm() / wet.norm().clamp_min(1e-12)
        return clip_of(wet * level, clip.sample_rate)


# --------------------------------------------------------------------------- spectrogram masks


def hz_to_mel(hz: float) -> float:
    return 2595.0 * math.log10(1.0 + hz / 700.0)  # the HTK scale, torchaudio's MelSpectrogram default


def mel_to_hz(mel: float) -> float:
    return 700.0 * (10 ** (mel / 2595.0) - 1.0)


class SpecAugment(AudioAugmentation):
    """SpecAugment's frequency and time masks (Park et al., Interspeech 2019), cut into the clip itself.

    Why the clip and not the log-mel features: augmentations receive raw clips, before the encoder's
    preprocessor, and the same preprocessor serves training, validation, evaluation and indexing (and
    its description keys the feature cache), so a training-only switch inside it would need a training
    flag the core does not pass, and would tie the augmentation to one encoder.  Masking the clip's
    short-time spectrum and resynthesising it (torch ``stft``/``istft``) keeps the contract of every
    augmentation -- a clip in, a clip out -- works with any audio encoder, and evaluation never sees it.
    Frequency masks are drawn on the mel scale (a width is a share of 0 Hz..Nyquist in mels), so they
    fall on whole log-mel bands of any encoder; time masks are in seconds.  A masked region is silence,
    so the encoder's log-mel sees its floor there (``top_db`` below the clip's peak) rather than
    SpecAugment's mean value; edges are soft by one window (``win_ms``) in time and one STFT bin in frequency.

    Mind the captions: a time mask as long as a short event deletes it.
    """

    def __init__(self, p: float, freq_masks: int, freq_width: Sequence[float], time_masks: int,
                 time_width_s: Sequence[float], win_ms: float):
        super().__init__(p)
        self.freq_masks, self.freq_width = freq_masks, tuple(freq_width)
        self.time_masks, self.time_width_s = time_masks, tuple(time_width_s)
        self.win_ms = win_ms

    def draw(self, clip: Clip) -> dict[str, Any]:
        top = hz_to_mel(clip.sample_rate / 2)
        bands = []
        for _ in range(self.freq_masks):
            width = uniform(self.freq_width) * top
            start = random.uniform(0, top - width)
            bands.append((mel_to_hz(start), mel_to_hz(start + width)))
        spans = []
        for _ in range(self.time_masks):
            width = min(uniform(self.time_width_s), clip.seconds)
            start = random.uniform(0, clip.seconds - width)
            spans.append((start, start + width))
        return {"bands_hz": bands, "spans_s": spans}

    def apply(self, clip: Clip, bands_hz: Sequence[tuple[float, float]], spans_s: Sequence[tuple[float, float]]) -> Clip:
        wave = wave_of(clip)
        rate, n = clip.sample_rate, wave.numel()
        n_fft = pow2_at_least(rate * self.win_ms / 1000)
        hop = n_fft // 4
        window = torch.hann_window(n_fft)
        spec = torch.stft(wave, n_fft, hop, window=window, center=True, pad_mode="constant", return_complex=True)
        freqs = torch.fft.rfftfreq(n_fft, 1 / rate)
        times = torch.arange(spec.shape[-1]) * hop / rate  # centre of each frame
        for low, high in bands_hz:
            spec[(freqs >= low) & (freqs <= high), :] = 0
        reach = n_fft / 2 / rate  # a frame covers its centre +- half a window
        for start, stop in spans_s:  # every frame that touches the span: the span itself is silent
            spec[:, (times >= start - reach) & (times <= stop + reach)] = 0
        return clip_of(torch.istft(spec, n_fft, hop, window=window, center=True, length=n), rate)
