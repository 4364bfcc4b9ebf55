"""Audio throughput: the audio loader's pairs/s against the audio model's training pairs/s (audio-quickstart).

The loader side iterates the recipe's real training DataLoader -- each clip decoded, resampled to the
encoder's rate and turned into a log-mel spectrogram in the preprocessor, captions tokenised, batches
collated -- with nothing else to do, at several worker counts and from three sources:

* ``memory``: the recipe as it is, generated clips in memory at the encoder's rate (log-mel only);
* ``memory@R``: clips generated at rate R (``--wav-rate``), so every clip is also resampled;
* ``wav@R``: the same clips as 16-bit WAV files in a temporary folder, read by ``AudioFile``
  (soundfile decode + resample + log-mel: what a dataset of files costs).

The model side runs training steps (forward, backward, AdamW) of the recipe's model on one batch of
the same loader, already in memory.  A ratio loader/model above 1 means the loader keeps up.

The log-mel front end is torchaudio's own (``torchaudio.transforms.MelSpectrogram`` and
``AmplitudeToDB``; the script checks), so there is no hand-written version to time against a
reference; instead it times one clip at a time through each step: decode, resample, log-mel; and the
resampling side by side with ``torchaudio.functional.resample``, which builds its sinc kernel for every clip
(the preprocessor keeps one ``torchaudio.transforms.Resample`` per source rate).

    python bench/audio_throughput.py                       # workers 0 (the recipe's), 1, 2; WAV at 16 kHz
    python bench/audio_throughput.py --workers 0 --batches 30 --wav-rate 44100
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import soundfile  # noqa: E402

from data_throughput import data_rate, model_rate  # noqa: E402
from xmcore.plugins import load_plugins  # noqa: E402
from xmcore.recipe import load_recipe, validate  # noqa: E402
from xmcore.run import assemble, build_data  # noqa: E402
from xmcore_audio.items import AudioFile  # noqa: E402

AUDIO = "audio"


def write_wavs(split, folder: Path):
    """The split with its clips written to (and read back from) 16-bit WAV files in ``folder``."""
    files = []
    for i, clip in enumerate(split.items[AUDIO]):
        path = folder / f"{i:05d}.wav"
        soundfile.write(path, clip.samples, clip.sample_rate, subtype="PCM_16")
        files.append(AudioFile(path))
    return dataclasses.replace(split, items={**split.items, AUDIO: files})


def per_clip_ms(step, items, repeat: int = 5) -> float:
    """Milliseconds per item of ``step`` over ``items``, the best of ``repeat`` passes."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for item in items:
            step(item)
        best = min(best, time.perf_counter() - start)
    return 1000 * best / len(items)


def front_end(preprocessor, native, resampled, files, count: int) -> list[str]:
    """Per-clip cost of each step, one process, one thread: decode, resample, log-mel."""
    import torch
    import torchaudio

    mel = preprocessor._transforms()[0]
    assert type(mel) is torchaudio.transforms.MelSpectrogram, type(mel)  # else: time it against torchaudio's
    torch.set_num_threads(1)
    native, resampled, files = native[:count], resampled[:count], files[:count]
    rate = resampled[0].sample_rate
    decode = per_clip_ms(lambda f: f.load(), files)
    resample = per_clip_ms(preprocessor.waveform, resampled)  # the transform kept for the rate: its kernel built once
    functional = per_clip_ms(lambda c: torchaudio.functional.resample(  # the kernel built for every clip
        torch.from_numpy(np.asarray(c.samples, dtype=np.float32)).reshape(-1), c.sample_rate, preprocessor.sample_rate),
        resampled)
    logmel = per_clip_ms(preprocessor, native)
    from_memory = per_clip_ms(preprocessor, resampled)
    from_wav = per_clip_ms(lambda f: preprocessor(f.load()), files)
    seconds = np.mean([c.seconds for c in native])
    return [
        f"front end: torchaudio.transforms.MelSpectrogram + AmplitudeToDB (torchaudio's own, no hand-written log-mel);"
        f" per clip, {count} clips of {seconds:.2f} s on average, 1 thread",
        f"  steps: decode WAV@{rate} (soundfile) {decode:.2f} ms/clip, resample {rate}->{preprocessor.sample_rate} "
        f"(torchaudio) {resample:.2f} ms/clip, log-mel {logmel:.2f} ms/clip",
        f"  resample {rate}->{preprocessor.sample_rate}: the kept torchaudio.transforms.Resample {resample:.2f} ms/clip, "
        f"torchaudio.functional.resample {functional:.2f} ms/clip: {functional / resample:.2f}x faster",
        f"  in-memory clip at {preprocessor.sample_rate} Hz (log-mel):            {logmel:6.2f} ms/clip",
        f"  in-memory clip at {rate} Hz (resample + log-mel):  {from_memory:6.2f} ms/clip",
        f"  WAV file at {rate} Hz (decode + resample + log-mel): {from_wav:6.2f} ms/clip, "
        f"{from_wav / from_memory:.2f}x the in-memory clip at the same rate",
    ]


def main(argv: list[str] | None = None) -> list[tuple[str, int, float, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "audio-quickstart.yaml"))
    parser.add_argument("--batches", type=int, default=15)
    parser.add_argument("--workers", default=None, help="comma-separated worker counts (default: the recipe's, 1, 2)")
    parser.add_argument("--wav-rate", type=int, default=16000, help="rate of the resampled clips and WAV files (Hz)")
    parser.add_argument("--clips", type=int, default=200, help="clips timed one by one for the front end")
    parser.add_argument("overrides", nargs="*", help="recipe overrides, key=value")
    args = parser.parse_args(argv)

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} cores, load average {load} (other processes share them), "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}", flush=True)
    plugins = load_plugins()
    loaded = load_recipe(args.recipe, args.overrides)
    recipe = validate(loaded, plugins)
    counts = ([int(w) for w in args.workers.split(",")] if args.workers
              else list(dict.fromkeys([recipe.data.num_workers, 1, 2])))
    pl.seed_everything(recipe.seed, verbose=False)
    _, module, datamodule = assemble(recipe, loaded.base_dir, None)
    preprocessor = datamodule.preprocessors[AUDIO]
    model = model_rate(module, datamodule, args.batches)
    print(f"model: {model:.1f} training pairs/s ({Path(args.recipe).name}, batch {recipe.data.batch_size}, "
          f"forward + backward + AdamW)", flush=True)

    at_rate = load_recipe(args.recipe, [*args.overrides, f"data.sample_rate={args.wav_rate}"])
    resampled = build_data(validate(at_rate, plugins), at_rate.base_dir).splits["train"]
    native = datamodule.data.splits["train"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="xmcore-audio-bench-") as tmp:
        start = time.perf_counter()
        on_disk = write_wavs(resampled, Path(tmp))
        print(f"wrote {len(on_disk.items[AUDIO])} WAV files at {args.wav_rate} Hz in {time.perf_counter() - start:.1f} s",
              flush=True)
        sources = {"memory": native, f"memory@{args.wav_rate}": resampled, f"wav@{args.wav_rate}": on_disk}
        for name, split in sources.items():
            datamodule.data.splits["train"] = split
            for workers in counts:
                datamodule.num_workers = workers
                data = data_rate(datamodule, args.batches)
                rows.append((name, workers, data, model))
                verdict = "the loader keeps up" if data >= model else "loading is the bottleneck"
                print(f"audio loader {name:>11}, {workers} workers: {data:8.1f} pairs/s, model {model:7.1f} pairs/s, "
                      f"ratio {data / model:5.2f} ({verdict})", flush=True)
        datamodule.data.splits["train"] = native
        for line in front_end(preprocessor, native.items[AUDIO], resampled.items[AUDIO], on_disk.items[AUDIO],
                              args.clips):
            print(line, flush=True)
    return rows


if __name__ == "__main__":
    main()
