"""Audio augmentations (xmcore-audio): each measured doing what it says, repeatable for a seed, training only."""

import json
import random

import numpy as np
import pytest
import soundfile
import torch
from pydantic import ValidationError

from conftest import ROOT, cli
from xmcore.errors import XmcoreError
from xmcore.plugins import load_plugins
from xmcore.registry import BuildContext
from xmcore.testing import build, tiny_overrides
from xmcore_audio.items import Clip

PLUGINS = load_plugins()
AUDIO_AUGS = ["gain", "noise", "time-shift", "speed", "pitch-shift", "reverb", "spec-augment"]
RECIPE = ROOT / "recipes" / "audio-quickstart.yaml"
RATE = 8000


def augmentation(name, base_dir=None, **params):
    ctx = BuildContext(modality="audio", base_dir=base_dir) if base_dir else BuildContext(modality="audio")
    return build(PLUGINS["augmentation"].get(name), ctx, **{"p": 1.0, **params})


def seeded(fn, seed=0):
    random.seed(seed)
    torch.manual_seed(seed)
    return fn()


def sine(hz, seconds=1.0, rate=RATE, amplitude=0.5):
    return Clip(amplitude * np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate), rate)


def click(at_s, seconds=1.0, rate=RATE):
    samples = np.zeros(int(seconds * rate), dtype=np.float32)
    samples[int(round(at_s * rate))] = 1.0
    return Clip(samples, rate)


def noise_clip(seconds=1.0, rate=RATE, seed=0):
    return Clip(np.random.default_rng(seed).normal(0, 0.2, int(seconds * rate)), rate)


def rms(x):
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def dominant_hz(clip):
    spectrum = np.abs(np.fft.rfft(clip.samples * np.hanning(len(clip.samples))))
    return float(np.fft.rfftfreq(len(clip.samples), 1 / clip.sample_rate)[spectrum.argmax()])


def snr_db(clean, noisy):
    return 10 * np.log10(np.sum(np.square(clean, dtype=np.float64)) / np.sum(np.square(noisy - clean, dtype=np.float64)))


def octave_power_db(x, rate, low_hz):
    """Power of ``x`` in the octave [low_hz, 2 low_hz], in dB."""
    spectrum = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    return 10 * np.log10(spectrum[(freqs >= low_hz) & (freqs < 2 * low_hz)].sum())


# --------------------------------------------------------------------------- each one, measured


def test_gain_of_6_db_doubles_the_rms_amplitude():
    clip = sine(440)
    louder = seeded(lambda: augmentation("gain", gain_db=[6.0, 6.0])(clip))
    assert rms(louder.samples) / rms(clip.samples) == pytest.approx(10 ** (6 / 20), rel=1e-4)  # 1.995: doubled
    softer = seeded(lambda: augmentation("gain", gain_db=[-6.0, -6.0])(clip))
    assert rms(softer.samples) / rms(clip.samples) == pytest.approx(0.5, rel=3e-3)


@pytest.mark.parametrize("color", ["white", "pink"])
def test_noise_at_10_db_snr_measures_10_db(color):
    clip = sine(440, seconds=2.0)
    noisy = seeded(lambda: augmentation("noise", snr_db=[10.0, 10.0], color=color)(clip))
    assert len(noisy.samples) == len(clip.samples) and noisy.sample_rate == RATE
    assert abs(snr_db(clip.samples, noisy.samples) - 10.0) <= 0.5
    added = noisy.samples - clip.samples
    # White noise has equal power per hertz (+3 dB per octave up), pink equal power per octave.
    tilt = octave_power_db(added, RATE, 1600) - octave_power_db(added, RATE, 100)
    assert (tilt > 10) if color == "white" else (abs(tilt) < 2), tilt


def test_noise_from_a_folder_of_clips(tmp_path):
    """A noise clip at another rate is read with soundfile, resampled and mixed at the drawn SNR."""
    folder = tmp_path / "noise"
    folder.mkdir()
    hum = 0.3 * np.sin(2 * np.pi * 1000 * np.arange(4000) / 16000)  # 0.25 s of 1 kHz at 16 kHz: repeated
    soundfile.write(folder / "hum.flac", hum, 16000)
    (folder / "notes.txt").write_text("not audio: ignored")
    clip = sine(440)
    noisy = seeded(lambda: augmentation("noise", base_dir=tmp_path, snr_db=[10.0, 10.0], folder="noise")(clip))
    assert abs(snr_db(clip.samples, noisy.samples) - 10.0) <= 0.5
    assert abs(dominant_hz(Clip(noisy.samples - clip.samples, RATE)) - 1000) < 5  # the file's hum, at its pitch


def test_noise_folder_problems_are_named(tmp_path):
    with pytest.raises(XmcoreError, match=r"noise\.folder: noise folder .*missing does not exist"):
        augmentation("noise", base_dir=tmp_path, folder="missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(XmcoreError, match="holds no audio files"):
        augmentation("noise", base_dir=tmp_path, folder="empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "fake.wav").write_text("a text file named .wav")
    with pytest.raises(XmcoreError, match=r"1 noise file\(s\) .* fake\.wav \(unreadable"):
        augmentation("noise", base_dir=tmp_path, folder="bad")
    with pytest.raises(ValidationError, match="either color .* or folder"):
        augmentation("noise", base_dir=tmp_path, folder="bad", color="pink")


def test_time_shift_moves_the_onset_of_a_click_by_the_drawn_amount():
    clip = click(0.2)
    aug = augmentation("time-shift", shift_s=[0.1, 0.3])
    drawn = seeded(lambda: aug.draw(clip))["shift_s"]
    shifted = seeded(lambda: aug(clip))
    assert 0.1 <= drawn <= 0.3
    assert np.argmax(shifted.samples) == int(round(0.2 * RATE)) + int(round(drawn * RATE))
    assert len(shifted.samples) == len(clip.samples) and np.count_nonzero(shifted.samples) == 1
    earlier = seeded(lambda: augmentation("time-shift", shift_s=[-0.15, -0.15])(clip))
    assert np.argmax(earlier.samples) == int(0.05 * RATE)
    # pad drops what passes the end; circular brings it back at the start
    late = click(0.9)
    assert not seeded(lambda: augmentation("time-shift", shift_s=[0.2, 0.2])(late)).samples.any()
    wrapped = seeded(lambda: augmentation("time-shift", shift_s=[0.2, 0.2], mode="circular")(late))
    assert np.argmax(wrapped.samples) == int(round(0.1 * RATE))


def test_speed_1_5_shortens_a_clip_by_1_over_1_5():
    clip = sine(400, seconds=1.2)
    faster = seeded(lambda: augmentation("speed", factor=[1.5, 1.5])(clip))
    assert abs(len(faster.samples) - len(clip.samples) / 1.5) <= 1
    assert dominant_hz(faster) == pytest.approx(600, abs=3)  # pitch moves with speed (Ko et al. 2015)
    tempo = seeded(lambda: augmentation("speed", factor=[1.5, 1.5], keep_pitch=True)(clip))
    assert abs(len(tempo.samples) - len(clip.samples) / 1.5) <= 1
    assert dominant_hz(tempo) == pytest.approx(400, abs=3)  # a tempo change: same pitch
    slower = seeded(lambda: augmentation("speed", factor=[0.8, 0.8])(clip))
    assert abs(len(slower.samples) - len(clip.samples) / 0.8) <= 1


@pytest.mark.parametrize("rate", [8000, 16000])
def test_pitch_shift_of_12_semitones_doubles_the_dominant_frequency(rate):
    clip = sine(440, rate=rate)
    up = seeded(lambda: augmentation("pitch-shift", semitones=[12.0, 12.0])(clip))
    assert len(up.samples) == len(clip.samples) and up.sample_rate == rate
    assert dominant_hz(clip) == pytest.approx(440, abs=2)
    assert dominant_hz(up) == pytest.approx(880, abs=3)
    down = seeded(lambda: augmentation("pitch-shift", semitones=[-7.0, -7.0])(clip))
    assert dominant_hz(down) == pytest.approx(440 * 2 ** (-7 / 12), abs=3)


def decay_time_s(samples, rate, from_db=-5.0, to_db=-25.0):
    """Reverberation time from Schroeder's backward-integrated energy decay curve (T20 scaled to 60 dB)."""
    onset = int(np.argmax(np.abs(samples)))
    energy = np.cumsum(np.square(samples[onset:], dtype=np.float64)[::-1])[::-1]
    curve = 10 * np.log10(energy / energy[0] + 1e-30)
    first, last = np.argmax(curve <= from_db), np.argmax(curve <= to_db)
    return (last - first) / rate * 60 / (from_db - to_db)


def test_reverb_lengthens_the_energy_decay_of_a_click():
    clip = click(0.1, seconds=1.5)
    wet = seeded(lambda: augmentation("reverb", rt60=[0.5, 0.5], drr_db=[0.0, 0.0])(clip))
    assert len(wet.samples) == len(clip.samples)
    assert rms(wet.samples) == pytest.approx(rms(clip.samples), rel=1e-4)  # a room, not a gain change
    assert np.argmax(np.abs(wet.samples)) == int(0.1 * RATE)  # the direct sound comes first
    assert decay_time_s(clip.samples, RATE) < 0.01
    assert decay_time_s(wet.samples, RATE) == pytest.approx(0.5, rel=0.2)


def test_spec_augment_silences_the_masked_mel_bands_and_frames():
    """Measured in the log-mel features the audio-cnn encoder computes from the augmented clip."""
    from torchaudio.functional import melscale_fbanks

    encoder = build(PLUGINS["encoder"].get("audio-cnn"), sample_rate=RATE, n_mels=40, win_ms=32, hop_ms=16,
                    max_seconds=2.0)
    pre = encoder.preprocessor
    clip = noise_clip(seconds=2.0)
    aug = augmentation("spec-augment", freq_masks=1, freq_width=[0.25, 0.25], time_masks=1, time_width_s=[0.4, 0.4])
    drawn = seeded(lambda: aug.draw(clip), seed=3)
    masked = seeded(lambda: aug(clip), seed=3)
    (low, high), (start, stop) = drawn["bands_hz"][0], drawn["spans_s"][0]
    assert stop - start == pytest.approx(0.4) and high - low > 200

    before = pre(clip)["mel"][0] * 20  # dB
    after = pre(masked)["mel"][0] * 20
    fbank = melscale_fbanks(pre.n_fft // 2 + 1, pre.f_min, pre.f_max, pre.n_mels, RATE)  # [freqs, mels]
    freqs = torch.linspace(0, RATE / 2, pre.n_fft // 2 + 1)
    support = [(freqs[fbank[:, m] > 0].min().item(), freqs[fbank[:, m] > 0].max().item()) for m in range(pre.n_mels)]
    margin = 3 * RATE / pre.n_fft  # the encoder's Hann window leaks over +-2 of its bins
    inside = [m for m, (lo, hi) in enumerate(support) if lo >= low + margin and hi <= high - margin]
    outside = [m for m, (lo, hi) in enumerate(support) if hi < low - margin or lo > high + margin]
    frame_s = torch.arange(before.shape[1]) * pre.hop_length / RATE
    reach = pre.n_fft / RATE  # the encoder's window plus the augmentation's
    kept = ((frame_s < start - reach) | (frame_s > stop + reach)) & (frame_s > reach) & (frame_s < 2.0 - reach)
    silent = (frame_s > start + reach) & (frame_s < stop - reach)
    assert len(inside) >= 3 and len(outside) >= 10 and kept.sum() > 40 and silent.sum() > 10

    drop = before - after
    band = drop[inside][:, kept]
    assert band.mean() > 40 and band.min() > 25, (band.mean(), band.min())  # the masked band, in every kept frame
    assert drop[outside][:, kept].abs().max() < 1.5  # elsewhere unchanged
    assert drop[:, silent].min() > 40  # the masked span: every band


# --------------------------------------------------------------------------- all of them


@pytest.mark.parametrize("name", AUDIO_AUGS)
def test_p_0_is_the_identity(name):
    clip = noise_clip()
    out = seeded(lambda: augmentation(name, p=0.0)(clip))
    assert np.array_equal(out.samples, clip.samples) and out.sample_rate == clip.sample_rate


@pytest.mark.parametrize("name", AUDIO_AUGS)
def test_same_seed_same_result(name):
    aug = augmentation(name)
    clip = sine(500, seconds=0.8)
    first = seeded(lambda: aug(clip), seed=1)
    again = seeded(lambda: aug(clip), seed=1)
    other = seeded(lambda: aug(clip), seed=2)
    assert isinstance(first, Clip) and first.sample_rate == clip.sample_rate
    assert np.isfinite(first.samples).all() and first.samples.dtype == np.float32
    assert np.array_equal(first.samples, again.samples)
    assert not np.array_equal(first.samples, clip.samples)  # p=1 changes the clip
    assert len(first.samples) != len(other.samples) or not np.array_equal(first.samples, other.samples)


def test_p_draws_per_clip():
    aug = augmentation("gain", p=0.3, gain_db=[6.0, 6.0])
    clip = sine(500, seconds=0.1)
    changed = sum(not np.array_equal(aug(clip).samples, clip.samples) for _ in range(400))
    assert 80 <= changed <= 160  # 120 expected


def test_bad_ranges_are_refused_with_the_key(capfd):
    result = cli(capfd, "validate", RECIPE, "augment.audio=[{name: gain, gain_db: [6, -6]}, {name: speed, factor: [0, 2]}]")
    assert result.returncode == 2
    assert "augment.audio.0" in result.stderr and "[6.0, -6.0] is not a range" in result.stderr
    assert "augment.audio.1" in result.stderr and "at least 0.1" in result.stderr
    result = cli(capfd, "validate", RECIPE, "augment.text=[{name: reverb}]")
    assert result.returncode == 2 and "does not accept modality 'text'" in result.stderr


# --------------------------------------------------------------------------- in a run

ALL_SEVEN = ("augment.audio=[{name: gain, p: 1}, {name: noise, color: pink, p: 1}, {name: time-shift, mode: circular, p: 1}, "
             "{name: speed, keep_pitch: true, p: 1}, {name: pitch-shift, p: 1}, {name: reverb, p: 1}, {name: spec-augment, p: 1}]")


def test_audio_augmentations_apply_to_training_clips_only(plugins):
    from xmcore.data import materialize
    from xmcore.recipe import load_recipe, validate
    from xmcore.run import assemble

    loaded = load_recipe(RECIPE, tiny_overrides(RECIPE, plugins, [ALL_SEVEN]) + [ALL_SEVEN])
    built, _, datamodule = assemble(validate(loaded, plugins), loaded.base_dir, None)
    assert len(built.augment["audio"]) == 7
    pre = built.encoders["audio"].preprocessor

    def plain(split, index):
        return pre(materialize(split.items["audio"][index]))["mel"]

    train = built.data.splits["train"]
    pairs = datamodule.train_dataloader().dataset
    random.seed(0)
    torch.manual_seed(0)  # each augmentation draws from the global generators, as in a seeded run
    for j in range(4):
        assert not torch.equal(pairs[j]["audio"]["mel"], plain(train, int(train.owner[j]))), j
    val = built.data.splits["val"]
    pairs = datamodule.val_dataloader().dataset
    for j in range(4):
        assert torch.equal(pairs[j]["audio"]["mel"], plain(val, int(val.owner[j]))), j
    test = built.data.splits["test"]
    audio_items = datamodule.item_dataloaders("test")[test.modalities.index("audio")].dataset
    for i in range(4):
        assert torch.equal(audio_items[i]["item"]["mel"], plain(test, i)), i


def test_audio_quickstart_trains_and_evaluates_with_augmentations(plugins, tmp_path, capfd):
    result = cli(capfd, "run", RECIPE, *tiny_overrides(RECIPE, plugins, [ALL_SEVEN]), ALL_SEVEN,
                 "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 <= metrics["a2t/R@5"] <= 1 and 0 <= metrics["t2a/R@5"] <= 1
    saved = (tmp_path / "run" / "recipe.yaml").read_text()
    assert all(name in saved for name in AUDIO_AUGS)
