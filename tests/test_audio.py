"""The audio plugin: AudioFile items and bad audio, the generated `tones` data, the `audio-cnn` encoder."""

import json
import pickle

import numpy as np
import pytest
import soundfile
import torch

from conftest import ROOT, cli
from xmcore.data import Split, clean_split
from xmcore.plugins import load_plugins
from xmcore.testing import TINY_TRAINER, build
from xmcore_audio import TonesParams
from xmcore_audio.items import AudioFile, Clip
from xmcore_audio.tones import Event, caption, generate, synthesize

PLUGINS = load_plugins()
RECIPE = ROOT / "recipes" / "audio-quickstart.yaml"


def tone(seconds, rate, hz=440.0, amplitude=0.5):
    return (amplitude * np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def write_bad_audio(folder):
    """One clip of each kind the data check refuses; returns {file name: expected reason prefix}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "text.wav").write_text("this is not audio, whatever its name says\n")
    soundfile.write(folder / "zero.wav", np.zeros(0, dtype=np.float32), 8000)
    nan = tone(0.3, 8000)
    nan[100:110] = np.nan
    soundfile.write(folder / "nan.wav", nan, 8000, subtype="FLOAT")
    return {
        "missing.wav": "missing file",
        "empty.wav": "unreadable audio",
        "text.wav": "unreadable audio",
        "zero.wav": "zero-length audio",
        "nan.wav": "non-finite samples",
    }


# --------------------------------------------------------------------------- items


def test_audio_file_decodes_lazily_to_mono_float32(tmp_path):
    left, right = tone(0.25, 8000, 440), tone(0.25, 8000, 880, 0.2)
    soundfile.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 8000, subtype="PCM_16")
    item = AudioFile(tmp_path / "stereo.wav")
    assert item.check() is None
    clip = item.load()
    assert clip.sample_rate == 8000 and clip.samples.dtype == np.float32 and clip.samples.ndim == 1
    np.testing.assert_allclose(clip.samples, (left + right) / 2, atol=2e-4)  # PCM_16 rounding
    assert pickle.loads(pickle.dumps(clip)).samples.tolist() == clip.samples.tolist()


def test_bad_audio_is_skipped_and_reported_by_clean_split(tmp_path):
    expected = write_bad_audio(tmp_path)
    soundfile.write(tmp_path / "good.wav", tone(0.3, 8000), 8000)
    names = ["good.wav", *expected]
    split = Split(("audio", "text"), {"audio": [AudioFile(tmp_path / n) for n in names],
                                     "text": [f"caption of {n}" for n in names]}, np.arange(len(names)))
    cleaned, report = clean_split(split)
    assert [a.path.name for a in cleaned.items["audio"]] == ["good.wav"]
    assert cleaned.items["text"] == ["caption of good.wav"]
    assert report["used"] == {"audio": 1, "text": 1}
    assert report["skipped"] == {"audio": 5, "text": 0}
    reasons = {p["item"].rsplit("/", 1)[-1]: p["reason"] for p in report["problems"]}
    assert set(reasons) == set(expected)
    for name, prefix in expected.items():
        assert reasons[name].startswith(prefix), (name, reasons[name])


def test_bad_audio_in_a_run_one_warning_and_data_report(tmp_path, capfd, monkeypatch):
    """A real run whose training clips are WAV files on disk, five of them bad: trained on the good ones."""
    import xmcore_audio.tones

    folder = tmp_path / "wav"
    expected = write_bad_audio(folder)
    generated = generate(TonesParams(train=12, val=4, test=4, sample_rate=8000))

    def from_files(params):
        train = generated.splits["train"]
        items = []
        for i, clip in enumerate(train.items["audio"]):
            soundfile.write(folder / f"{i}.wav", clip.samples, clip.sample_rate, subtype="FLOAT")
            items.append(AudioFile(folder / f"{i}.wav"))
        bad = [AudioFile(folder / n) for n in expected]
        texts = list(train.items["text"]) + [f"a clip named {p.path.stem}" for p in bad]
        owner = np.concatenate([train.owner, len(items) + np.arange(len(bad))])
        generated.splits["train"] = Split(("audio", "text"), {"audio": items + bad, "text": texts}, owner)
        return generated

    monkeypatch.setattr(xmcore_audio.tones, "generate", from_files)
    result = cli(capfd, "run", RECIPE, *TINY_TRAINER, "data.batch_size=8", "encoders.audio.n_mels=16",
                 "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "skipped" in line and "bad items" in line]
    assert len(warnings) == 1 and "skipped 5 bad items" in warnings[0], result.stderr[-2000:]
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())["splits"]["train"]
    assert report["used"] == {"audio": 12, "text": 60}
    assert report["skipped"] == {"audio": 5, "text": 0}
    assert report["reasons"] == {"missing file": 1, "unreadable audio": 2, "zero-length audio": 1, "non-finite samples": 1}
    assert sorted(p["item"].rsplit("/", 1)[-1] for p in report["problems"]) == sorted(expected)


# --------------------------------------------------------------------------- tones


def test_tones_is_deterministic_for_its_seed():
    a = generate(TonesParams(train=6, val=0, test=3, sample_rate=8000, seed=3))
    b = generate(TonesParams(train=6, val=0, test=3, sample_rate=8000, seed=3))
    c = generate(TonesParams(train=6, val=0, test=3, sample_rate=8000, seed=4))
    assert set(a.splits) == {"train", "test"} and a.modalities == ("audio", "text")
    for x, y in zip(a.splits["train"].items["audio"], b.splits["train"].items["audio"]):
        assert x.sample_rate == 8000 and np.array_equal(x.samples, y.samples)
    assert a.splits["train"].items["text"] == b.splits["train"].items["text"]
    assert a.splits["train"].items["text"] != c.splits["train"].items["text"]
    assert len(a.splits["train"].items["text"]) == 30 and a.splits["train"].owner.tolist() == np.repeat(np.arange(6), 5).tolist()


def test_tones_captions_name_the_events_in_order():
    rng = np.random.default_rng(0)
    events = [Event("high beep", "short"), Event("falling chirp", "long")]
    texts = {caption(events, rng) for _ in range(40)}
    assert len(texts) > 10  # paraphrases
    first_then_second = [t for t in texts if " after " not in t]  # "{1} after {0}" names them backwards on purpose
    for t in first_then_second:
        hi = min(t.find(w) for w in ("high beep", "high-pitched beep", "high tone") if w in t)
        fall = min(t.find(w) for w in ("falling chirp", "downward sweep", "falling sweep") if w in t)
        assert 0 <= hi < fall, t
    assert "a short high beep followed by a long falling chirp" in texts or any(
        t.startswith("first a ") and "then a " in t for t in texts)


@pytest.mark.parametrize("sound, band", [("low beep", (250, 330)), ("mid beep", (650, 850)), ("high beep", (1700, 2100))])
def test_tones_beeps_sound_at_their_pitch(sound, band):
    rate = 8000
    wave = synthesize([Event(sound, "long")], rate, np.random.default_rng(1))
    spectrum = np.abs(np.fft.rfft(wave))
    peak = np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()]
    assert band[0] - 5 <= peak <= band[1] + 5


def test_tones_chirps_rise_and_fall():
    rate = 8000

    def centroid_track(sound):
        wave = synthesize([Event(sound, "long")], rate, np.random.default_rng(2))
        frames = [wave[i : i + 256] for i in range(0, len(wave) - 256, 256)]
        freqs = np.fft.rfftfreq(256, 1 / rate)
        loud = [f for f in frames if np.abs(f).max() > 0.1]
        return [float((np.abs(np.fft.rfft(f)) * freqs).sum() / np.abs(np.fft.rfft(f)).sum()) for f in loud]

    rising, falling = centroid_track("rising chirp"), centroid_track("falling chirp")
    assert rising[-1] > 2 * rising[0] and falling[0] > 2 * falling[-1]


# --------------------------------------------------------------------------- encoder


def audio_encoder(**overrides):
    return build(PLUGINS["encoder"].get("audio-cnn"), **overrides)


def embed(encoder, clips):
    pre = encoder.preprocessor
    with torch.no_grad():
        return encoder.eval()(pre.collate([pre(c) for c in clips]))


def test_embedding_does_not_depend_on_the_batch():
    """Alone, or beside clips of other lengths and rates (one longer than a window): equal to 1e-5."""
    torch.manual_seed(0)
    encoder = audio_encoder(sample_rate=8000, n_mels=16, max_seconds=0.5)
    rng = np.random.default_rng(0)
    clips = [
        Clip(tone(0.2, 8000, 500), 8000),
        Clip(rng.normal(0, 0.3, int(1.3 * 8000)).astype(np.float32), 8000),  # three windows
        Clip(tone(0.45, 16000, 1500), 16000),  # resampled
        Clip(tone(0.05, 8000, 300), 8000),
    ]
    together = embed(encoder, clips)
    for i, clip in enumerate(clips):
        alone = embed(encoder, [clip])
        torch.testing.assert_close(alone[0], together[i], atol=1e-5, rtol=0)
    reordered = embed(encoder, clips[::-1])
    torch.testing.assert_close(reordered.flip(0), together, atol=1e-5, rtol=0)


def test_long_clip_is_windowed_and_averaged_never_cut():
    torch.manual_seed(0)
    encoder = audio_encoder(sample_rate=8000, n_mels=16, max_seconds=0.5)
    rng = np.random.default_rng(1)
    head = rng.normal(0, 0.3, 4000).astype(np.float32)  # exactly one window
    tail = tone(0.25, 8000, 1200)  # half a window more
    long_clip = Clip(np.concatenate([head, tail]), 8000)
    batch = encoder.preprocessor(long_clip)
    assert batch["mel"].shape[0] == 2 and batch["weight"].tolist() == [1.0, 0.5]
    whole = embed(encoder, [long_clip])[0]
    parts = embed(encoder, [Clip(head, 8000), Clip(tail, 8000)])
    torch.testing.assert_close(whole, (parts[0] * 1.0 + parts[1] * 0.5) / 1.5, atol=1e-5, rtol=0)
    assert not torch.allclose(whole, parts[0], atol=1e-3)  # the tail counts: nothing was cut


def test_a_clip_at_another_rate_is_resampled():
    pre = audio_encoder(sample_rate=8000, n_mels=16, max_seconds=1.0).preprocessor
    at_8k = pre(Clip(tone(0.5, 8000, 700), 8000))
    at_16k = pre(Clip(tone(0.5, 16000, 700), 16000))
    assert pre.waveform(Clip(tone(0.5, 16000), 16000)).numel() == 4000
    assert at_8k["mel"].shape == at_16k["mel"].shape
    assert (at_8k["mel"] - at_16k["mel"]).abs().mean() < 0.05 * at_8k["mel"].abs().mean()
    unresampled = pre(Clip(tone(0.5, 8000, 1400), 8000))  # what reading 16 kHz samples as 8 kHz would give
    assert (unresampled["mel"] - at_16k["mel"]).abs().mean() > 5 * (at_8k["mel"] - at_16k["mel"]).abs().mean()


def test_resampling_keeps_one_transform_per_rate_and_gives_torchaudio_functional_resamples_samples():
    """The sinc kernel is built once per source rate (a kept torchaudio.transforms.Resample), not for every
    clip; the samples are the functional's, whose description the feature cache keys on."""
    import torchaudio

    pre = audio_encoder(sample_rate=16000, n_mels=16, max_seconds=1.0).preprocessor
    rng = np.random.default_rng(0)
    for rate in (44100, 22050, 8000, 44100):
        samples = rng.uniform(-1, 1, int(rate * 0.7)).astype(np.float32)
        expected = torchaudio.functional.resample(torch.from_numpy(samples), rate, 16000)
        torch.testing.assert_close(pre.waveform(Clip(samples, rate)), expected, atol=1e-5, rtol=0)
    first = pre.resampler(44100)
    assert isinstance(first, torchaudio.transforms.Resample) and sorted(pre._resamplers) == [8000, 22050, 44100]
    pre.waveform(Clip(tone(0.3, 44100), 44100))
    assert pre.resampler(44100) is first  # a second clip of a rate reuses its transform
    assert pickle.loads(pickle.dumps(pre))._resamplers == {}  # workers get the description, not the kernels


def test_preprocessor_description_names_every_setting():
    """The description is part of the feature-cache key: each setting changes it."""
    base = dict(sample_rate=8000, n_mels=16, win_ms=25.0, hop_ms=10.0, max_seconds=1.0)
    text = repr(audio_encoder(**base).preprocessor)
    for key, value in base.items():
        assert f"{key if key != 'max_seconds' else 'window_seconds'}={value}" in text, (key, text)
    variants = {"sample_rate": 16000, "n_mels": 32, "win_ms": 32.0, "hop_ms": 16.0, "max_seconds": 2.0, "f_min": 20.0,
                "f_max": 3000.0}
    for key, value in variants.items():
        assert repr(audio_encoder(**{**base, key: value}).preprocessor) != text, key
    pre = pickle.loads(pickle.dumps(audio_encoder(**base).preprocessor))
    assert repr(pre) == text and pre(Clip(tone(0.1, 8000), 8000))["mel"].shape[1:] == (16, pre.frames)


def test_audio_cnn_refuses_bad_settings():
    from pydantic import ValidationError

    params = PLUGINS["encoder"].get("audio-cnn").params
    with pytest.raises(ValidationError, match="hop_ms"):
        params.model_validate({"win_ms": 10, "hop_ms": 20})
    with pytest.raises(ValidationError, match="half the sample rate"):
        params.model_validate({"sample_rate": 8000, "f_max": 6000})


def test_data_inspect_draws_spectrograms(tmp_path, capfd):
    from PIL import Image

    grid = tmp_path / "grid.png"
    result = cli(capfd, "data", "inspect", RECIPE, "data.train=4", "data.val=0", "data.test=2", "--grid", grid)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "audio items: 4" in result.stdout and "Clip(" in result.stdout
    pixels = np.asarray(Image.open(grid).convert("RGB")).astype(int)
    coloured = (pixels.max(axis=2) - pixels.min(axis=2)) > 60  # the magma colour map; captions are grey on white
    assert coloured.sum() > 10_000, coloured.sum()
