"""`xmcore index` and `xmcore search` on an audio run: clips in the gallery, clips as queries (--audio FILE),
a query at another sample rate resampled, bad query files refused with the reason."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from conftest import cli


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def index(audio_index, plugins):
    from xmcore.search import SearchIndex

    return SearchIndex(audio_index, plugins)


def query_embedding(index, path):
    with open(path, "rb") as fh:
        return index.model.embed("audio", [index.read_query("audio", fh)])[0]


def test_index_of_an_audio_run_records_its_preprocessing_and_keeps_each_clip_as_a_wav(trained_audio_run, tmp_path, capfd):
    result = cli(capfd, "index", trained_audio_run, "--out", tmp_path / "idx", "--split", "test")
    assert result.returncode == 0, result.stderr[-3000:]
    # the user sees how clips (and so queries) are read: the rate, the window, the mel settings
    assert "audio: LogMelPreprocessor(sample_rate=8000, n_mels=40, win_ms=32.0, hop_ms=16.0" in result.stdout
    assert "window_seconds=2.5" in result.stdout

    idx = tmp_path / "idx"
    manifest = json.loads((idx / "manifest.json").read_text())
    assert manifest["model"]["preprocessing"]["audio"] in result.stdout
    assert manifest["model"]["preprocessing"]["text"].startswith("TokenPreprocessor(")
    assert manifest["modalities"]["audio"]["media_types"] == ["audio/x-wav"]
    assert manifest["modalities"]["text"]["media_types"] == []
    clips, captions = lines(idx / "metadata" / "audio.jsonl"), lines(idx / "metadata" / "text.jsonl")
    assert len(clips) == 4 and len(captions) == 20  # tones' test split at test size: 4 clips, 5 captions each
    assert all(c["belongs_to"] == f"audio-{i // 5}" for i, c in enumerate(captions))
    for clip in clips:  # generated clips have no file: the index writes one a browser plays
        assert clip["media"] == f"media/{clip['id']}.wav" and clip["media_type"] == "audio/x-wav"
        info = soundfile.info(str(idx / clip["media"]))
        assert info.samplerate == 8000 and info.subtype == "PCM_16" and clip["source"].startswith(f"Clip({info.duration:.2f} s")
    assert set(manifest["media_checksums"]) == {f"audio-{i}.wav" for i in range(4)}


def test_an_audio_query_embeds_as_its_gallery_clip_and_ranks_captions_by_the_stored_embeddings(audio_index, index, capfd):
    clip = index.items["audio"][2]
    result = cli(capfd, "search", audio_index, "--audio", audio_index / clip["media"], "--target", "audio", "-k", "1", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    (hit,) = json.loads(result.stdout)
    assert hit["id"] == clip["id"] and hit["score"] == pytest.approx(1.0, abs=2e-3)  # the copy is 16-bit

    # default target: the other modality, captions, in the order the stored caption embeddings give
    result = cli(capfd, "search", audio_index, "--audio", audio_index / clip["media"], "-k", "5", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    hits = json.loads(result.stdout)
    query = query_embedding(index, audio_index / clip["media"])
    stored = np.concatenate([np.load(audio_index / s["file"]) for s in index.manifest["modalities"]["text"]["shards"]])
    expected = np.argsort(-(stored @ query), kind="stable")[:5]
    assert [h["id"] for h in hits] == [f"text-{i}" for i in expected]
    assert [h["score"] for h in hits] == pytest.approx((stored @ query)[expected], abs=1e-5)
    assert all(h["caption"] and h["belongs_to"].startswith("audio-") for h in hits)


def test_a_text_query_finds_clips(audio_index, index, capfd):
    caption = index.items["text"][7]
    result = cli(capfd, "search", audio_index, "--text", caption["caption"], "-k", "3", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    hits = json.loads(result.stdout)
    assert len(hits) == 3 and all(h["id"].startswith("audio-") and h["media_type"] == "audio/x-wav" for h in hits)
    stored = np.load(audio_index / index.manifest["modalities"]["audio"]["shards"][0]["file"])
    query = index.model.embed("text", [caption["caption"]])[0]
    assert [h["id"] for h in hits] == [f"audio-{i}" for i in np.argsort(-(stored @ query), kind="stable")[:3]]
    table = cli(capfd, "search", audio_index, "--text", caption["caption"], "-k", "2")
    assert table.returncode == 0 and "media/audio-" in table.stdout


def test_a_query_at_another_sample_rate_is_resampled(index, tmp_path):
    import torch
    import torchaudio

    rate = 16000
    t = np.arange(int(1.3 * rate)) / rate
    rng = np.random.default_rng(0)
    wave = (0.5 * np.sin(2 * np.pi * np.geomspace(300, 2500, len(t)) * t) * (t < 0.6)
            + 0.4 * np.sin(2 * np.pi * 700 * t) * (t > 0.8) + rng.normal(0, 0.02, len(t))).astype(np.float32)
    soundfile.write(tmp_path / "at-16k.wav", wave, rate, subtype="FLOAT")
    resampled = torchaudio.functional.resample(torch.from_numpy(wave), rate, 8000).numpy()
    soundfile.write(tmp_path / "at-8k.wav", resampled, 8000, subtype="FLOAT")
    soundfile.write(tmp_path / "stereo-16k.wav", np.stack([wave, wave], axis=1), rate, subtype="FLOAT")

    at_16k, at_8k = query_embedding(index, tmp_path / "at-16k.wav"), query_embedding(index, tmp_path / "at-8k.wav")
    np.testing.assert_allclose(at_16k, at_8k, atol=1e-4)
    np.testing.assert_allclose(query_embedding(index, tmp_path / "stereo-16k.wav"), at_16k, atol=1e-5)  # down-mixed
    # what it guards against: the same samples taken to be at the model's rate embed elsewhere
    from xmcore_audio.items import Clip

    as_if_8k = index.model.embed("audio", [Clip(wave, 8000)])[0]
    assert np.abs(as_if_8k - at_8k).max() > 1e-2


def test_bad_query_files_are_refused_with_the_reason(audio_index, tmp_path, capfd):
    (tmp_path / "text.wav").write_text("not a sound at all\n")
    (tmp_path / "empty.wav").write_bytes(b"")
    soundfile.write(tmp_path / "long.wav", np.zeros(121 * 8000, np.int16), 8000, subtype="PCM_16")
    soundfile.write(tmp_path / "silent.wav", np.zeros(0, np.float32), 8000)
    for args, expected in [
        (["--audio", tmp_path / "text.wav"], "text.wav: not a readable sound file (WAV, FLAC, OGG or MP3"),
        (["--audio", tmp_path / "empty.wav"], "not a readable sound file"),
        (["--audio", tmp_path / "silent.wav"], "unusable sound: zero-length audio"),
        (["--audio", tmp_path / "long.wav"], "long.wav: longer than 120 s (121.0 s)"),
        (["--audio", tmp_path / "missing.wav"], "--audio: no such file"),
        (["--audio", tmp_path], "is a folder"),
        (["--image", tmp_path / "text.wav"], "--image: this index has no 'image' model; it takes --text WORDS or --audio FILE"),
        (["--audoi", tmp_path / "text.wav"], "did you mean '--audio'?"),
        (["--audio", tmp_path / "long.wav", "--text", "a beep"], "give one query"),
        ([], "give one query"),
    ]:
        result = cli(capfd, "search", audio_index, *args)
        assert result.returncode == 2, args
        assert expected in result.stderr, (args, result.stderr)


def test_query_file_options_stand_anywhere_and_leave_search_options_to_argparse():
    from xmcore.cli import parse_args

    args = parse_args(["search", "--audio", "a.wav", "idx", "-k", "3", "--tar", "text"])
    assert args.index_dir.name == "idx" and args.query_files == [("audio", Path("a.wav"))]
    assert args.k == 3 and args.target == "text"  # --tar: argparse's abbreviation of --target, not a modality
    args = parse_args(["search", "idx", "--image=p.png"])
    assert args.query_files == [("image", Path("p.png"))]
    args = parse_args(["search", "idx", "--speech=s.flac", "--json"])
    assert args.query_files == [("speech", Path("s.flac"))] and args.json
    with pytest.raises(SystemExit):
        parse_args(["search", "idx", "--audio"])
