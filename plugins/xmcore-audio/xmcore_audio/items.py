"""Audio items: an in-memory :class:`Clip` and a lazy :class:`AudioFile` decoded with soundfile.

torchaudio's own load/save now need torchcodec, so files are decoded with
``soundfile`` (libsndfile: WAV, FLAC, OGG, MP3 where the library reads them).
Every clip is mono float32: multi-channel files are down-mixed by averaging.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xmcore.data import LazyItem, name_problem, outside_folder


class Clip:
    """Mono float32 samples and their sample rate: the raw item of the audio modality."""

    __slots__ = ("samples", "sample_rate")

    def __init__(self, samples, sample_rate: int):
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim == 2:  # (frames, channels), as soundfile returns: down-mix
            samples = samples.mean(axis=1, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"a clip is 1-D samples or (frames, channels); got shape {samples.shape}")
        self.samples = np.ascontiguousarray(samples)
        self.sample_rate = int(sample_rate)

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate

    def describe(self) -> dict[str, float | int]:
        """Duration and rate, which ``xmcore data inspect`` summarises over a split."""
        return {"duration (s)": self.seconds, "sample rate (Hz)": self.sample_rate}

    def fingerprint(self) -> str:
        """What identifies the clip for caches: its rate and a hash of its samples."""
        return f"clip:{self.sample_rate}:{len(self.samples)}:{hashlib.sha1(self.samples.tobytes()).hexdigest()}"

    def draw(self, ax) -> None:
        """The clip's spectrogram into a matplotlib axis (``xmcore data inspect --grid``)."""
        if len(self.samples) >= 256 and np.isfinite(self.samples).all():
            ax.specgram(self.samples, Fs=self.sample_rate, NFFT=256, noverlap=192, cmap="magma")
        ax.set_xlabel(f"{self.seconds:.2f} s at {self.sample_rate} Hz", fontsize=7)

    def to_file(self) -> tuple[bytes, str]:
        """The clip as a 16-bit WAV file (bytes, suffix), which every browser plays: how a search index shows
        a clip that has no file of its own.  Samples beyond full scale are clipped."""
        import io

        import soundfile

        buffer = io.BytesIO()
        soundfile.write(buffer, np.clip(self.samples, -1.0, 1.0), self.sample_rate, format="WAV", subtype="PCM_16")
        return buffer.getvalue(), ".wav"

    def __getstate__(self):
        return (self.samples, self.sample_rate)

    def __setstate__(self, state):
        self.samples, self.sample_rate = state

    def __repr__(self) -> str:
        return f"Clip({self.seconds:.2f} s at {self.sample_rate} Hz)"


def clip_problem(clip: Clip) -> str | None:
    """Why a decoded clip cannot be used, or ``None``."""
    if len(clip.samples) == 0:
        return "zero-length audio"
    if not np.isfinite(clip.samples).all():
        return f"non-finite samples ({int((~np.isfinite(clip.samples)).sum())} of {len(clip.samples)})"
    return None


@dataclass(frozen=True)
class AudioFile(LazyItem):
    """An audio file on disk, decoded (with soundfile) only when loaded; with ``root``, the data folder it must
    not be led out of by a symbolic link (as :class:`xmcore.data.ImageFile`)."""

    path: Path
    root: Path | None = None

    def load(self) -> Clip:
        import soundfile

        samples, rate = soundfile.read(str(self.path), dtype="float32", always_2d=True)
        return Clip(samples, rate)

    def check(self) -> str | None:
        """Why the clip cannot be used, or ``None``: a full decode, so truncated files are caught."""
        if not Path(self.path).is_file():
            return "missing file"
        refused = name_problem(Path(self.path)) or outside_folder(Path(self.path), self.root)
        if refused:  # before anything reads the file
            return refused
        try:
            clip = self.load()
        except Exception as exc:  # noqa: BLE001 -- libsndfile errors and ValueErrors alike
            return f"unreadable audio ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        return clip_problem(clip)

    def describe(self) -> dict[str, float | int]:
        """Duration, rate and channels as the file's header gives them (nothing decoded), which
        ``xmcore data inspect`` summarises over a split; channels are down-mixed when loaded."""
        import soundfile

        info = soundfile.info(str(self.path))
        return {"duration (s)": float(info.frames / info.samplerate), "sample rate (Hz)": int(info.samplerate),
                "channels": int(info.channels)}

    def fingerprint(self) -> str:
        """What identifies the file's content for caches: path, size and modification time."""
        try:
            st = Path(self.path).stat()
        except OSError:
            return f"{self.path}:missing"
        return f"{self.path}:{st.st_size}:{st.st_mtime_ns}"

    def __str__(self) -> str:
        return str(self.path)


def read_clip(file, max_seconds: float | None = None) -> Clip:
    """A clip from an open binary file (a search query): at most ``max_seconds`` long, checked from the
    file's header before its samples are decoded.  Raises :class:`xmcore.errors.QueryError` with the reason."""
    import soundfile

    from xmcore.errors import QueryError

    readable = "not a readable sound file (WAV, FLAC, OGG or MP3, as libsndfile reads them)"
    try:
        info = soundfile.info(file)
        file.seek(0)
        if max_seconds is not None and info.frames > max_seconds * info.samplerate:
            raise QueryError(f"longer than {max_seconds:g} s ({info.frames / info.samplerate:.1f} s); "
                             "search with a shorter excerpt", too_large=True)
        samples, rate = soundfile.read(file, dtype="float32", always_2d=True)
    except QueryError:
        raise
    except Exception as exc:  # noqa: BLE001 -- libsndfile errors, and whatever a damaged header leads to
        # libsndfile's own words ("Format not recognised."), without the file object soundfile names
        detail = getattr(exc, "error_string", None) or (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise QueryError(f"{readable}: {detail[:120]}") from None
    clip = Clip(samples, rate)
    problem = clip_problem(clip)
    if problem:
        raise QueryError(f"unusable sound: {problem}")
    return clip

