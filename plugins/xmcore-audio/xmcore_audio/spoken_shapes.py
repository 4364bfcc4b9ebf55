"""``spoken-shapes``: the ``shapes`` pictures, their captions, and each caption spoken by espeak-ng.

Three modalities of one scene -- image, text and speech -- for image<->speech retrieval (the visually
grounded speech task of DAVEnet and its successors) and for training several pairs into one space.
Each caption is spoken once, by a voice, speed and pitch drawn for it from the dataset's seed, so a
split's speech varies in speaker and tempo as real spoken captions do.

Synthesis runs once: every clip is a FLAC file in a cache folder named by what produced it (the text,
voice, speed, pitch, rate and espeak-ng's version), so later runs, other recipes and other processes
read the files.  Files are written to a temporary name and renamed, so a killed synthesis leaves no
half-written clip.  espeak-ng is a Debian package (``apt-get install espeak-ng``); without it the
dataset stops with a message saying so.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from xmcore.data import RetrievalData, Split, generated_splits
from xmcore.errors import XmcoreError

MODALITIES = ("image", "text", "audio")


def espeak() -> str | None:
    """The espeak-ng executable, or ``None`` where it is not installed."""
    return shutil.which("espeak-ng")


def espeak_version(exe: str) -> str:
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout
    return out.split("text-to-speech:")[-1].split("Data")[0].strip() or out.strip()


def speech_dir(configured: str | Path | None) -> Path:
    from xmcore.cache import cache_dir

    return Path(configured) if configured else cache_dir().parent / "speech"


def _key(text: str, voice: str, speed: int, pitch: int, rate: int, version: str) -> str:
    return hashlib.sha1(repr((text, voice, speed, pitch, rate, version)).encode()).hexdigest()


def synthesize(exe: str, text: str, voice: str, speed: int, pitch: int, rate: int, target: Path) -> None:
    """Speak ``text`` into ``target`` (FLAC at ``rate`` Hz), atomically."""
    import soundfile
    import torch
    import torchaudio

    run = subprocess.run([exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                         capture_output=True, check=False)
    if run.returncode != 0 or not run.stdout:
        raise XmcoreError(f"spoken-shapes: espeak-ng failed for voice '{voice}' ({run.stderr.decode(errors='replace').strip()}); "
                          "check the voice with `espeak-ng --voices=en`")
    import io

    samples, native = soundfile.read(io.BytesIO(run.stdout), dtype="float32")
    if native != rate:
        samples = torchaudio.functional.resample(torch.from_numpy(samples), native, rate).numpy()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp.flac")
    os.close(fd)
    try:
        soundfile.write(tmp, samples, rate, format="FLAC", subtype="PCM_16")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def speak_all(texts: list[str], params, rng: np.random.Generator, folder: Path, exe: str, version: str,
              workers: int) -> tuple[list[Path], int]:
    """One file per caption, with a voice, speed and pitch drawn for it; files already there are reused."""
    plans = []
    for text in texts:
        voice = params.voices[int(rng.integers(len(params.voices)))]
        speed = int(rng.integers(params.speed[0], params.speed[1] + 1))
        pitch = int(rng.integers(params.pitch[0], params.pitch[1] + 1))
        path = folder / f"{_key(text, voice, speed, pitch, params.sample_rate, version)}.flac"
        plans.append((text, voice, speed, pitch, path))
    todo = [p for p in plans if not p[-1].is_file()]
    if todo:
        with ThreadPoolExecutor(max_workers=workers) as pool:  # espeak-ng runs as separate processes
            list(pool.map(lambda p: synthesize(exe, *p[:4], params.sample_rate, p[4]), todo))
    return [p[-1] for p in plans], len(todo)


def generate(params) -> RetrievalData:
    from xmcore_audio.items import AudioFile
    from xmcore_datasets.shapes import generate_split

    exe = espeak()
    if exe is None:
        raise XmcoreError("dataset 'spoken-shapes' needs espeak-ng to speak its captions, and it is not installed; "
                          "install it with `apt-get install espeak-ng` (Debian/Ubuntu), or use the `shapes` dataset")
    version = espeak_version(exe)
    folder = speech_dir(params.cache_dir)
    counts = {"train": params.train, "val": params.val, "test": params.test}
    spoken = {"count": 0, "new": 0}
    started = time.perf_counter()

    def make_split(count: int, rng: np.random.Generator) -> Split:
        pictured = generate_split(params, count, rng)
        texts = list(pictured.items["text"])
        paths, new = speak_all(texts, params, rng, folder, exe, version, params.workers)
        spoken["count"] += len(paths)
        spoken["new"] += new
        items = {"image": pictured.items["image"], "text": texts, "audio": [AudioFile(p) for p in paths]}
        return Split(MODALITIES, items, pictured.owner)

    splits = generated_splits(counts, params.seed, make_split)
    if spoken["new"]:
        print(f"spoken-shapes: spoke {spoken['new']} of {spoken['count']} captions with espeak-ng in "
              f"{time.perf_counter() - started:.0f} s (cached in {folder})", file=sys.stderr, flush=True)
    return RetrievalData(splits, description=f"spoken-shapes (seed {params.seed}; speech in {folder})")
