"""Sounds explained: occlusion over the log-mel input (time x frequency), drawn over that spectrogram."""

import json

import numpy as np
import pytest
import soundfile
import torch

from conftest import cli
from xmcore.components import Fusion
from xmcore.explain import ExplainModel, explain, peak
from xmcore.plugins import load_plugins
from xmcore.registry import BuildContext
from xmcore.testing import build

PLUGINS = load_plugins()
RATE = 8000


def _beeps(spec, rate=RATE, total=1.2):
    """A clip of sine beeps ``(hz, start s, end s)`` over a faint noise floor, and each beep's span in seconds."""
    from xmcore_audio.items import Clip

    t = np.arange(int(total * rate)) / rate
    signal = np.random.default_rng(0).normal(0, 0.005, len(t))
    for hz, start, end in spec:
        inside = (t >= start) & (t < end)
        signal[inside] += 0.6 * np.sin(2 * np.pi * hz * t[inside])
    return Clip(signal.astype(np.float32), rate)


def _audio_encoder(**params):
    return build(PLUGINS["encoder"].get("audio-cnn"), BuildContext(modality="audio"),
                 **{"sample_rate": RATE, "n_mels": 40, "win_ms": 32, "hop_ms": 16, **params})


def test_the_encoders_spectrogram_is_its_input_and_from_spectrogram_its_forward():
    """A clip over three windows: spectrogram() joins its windows' log-mels without the last one's padding, and
    from_spectrogram() of that map gives the encoder's own features; a changed map gives other features."""
    encoder = _audio_encoder(max_seconds=0.5).eval()
    clip = _beeps([(500, 0.1, 0.4), (1800, 0.7, 1.1)])
    batch = encoder.preprocessor.collate([encoder.preprocessor(clip)])
    assert batch["mel"].shape[0] == 3  # 1.2 s in 0.5 s windows
    values, canvas = encoder.spectrogram(batch)
    frames = batch["mel"].shape[-1]
    assert frames == 4000 // 128 + 1  # 0.5 s windows at 8 kHz, a 128-sample hop, centred frames
    assert values.shape == (40, 2 * frames + 1600 // 128 + 1)  # the last window holds 0.2 s of the clip
    assert canvas["extent"] == pytest.approx((0.0, values.shape[1] * 0.016, 0.0, 40.0))
    assert torch.equal(values[:, :frames], batch["mel"][0, 0])
    with torch.no_grad():
        own = encoder(batch)
        hidden = values.clone()
        hidden[:, 50:60] = values.min()
        again = encoder.from_spectrogram(torch.stack([values, hidden]), batch)
    assert torch.allclose(again[0], own[0], atol=1e-5)
    assert not torch.allclose(again[1], own[0], atol=1e-4)


class _Identity(Fusion):
    def forward(self, features, modality):
        return features


class _HighLow(torch.nn.Module):
    """How loud the upper and the lower half of the mel bands are (above the spectrogram's quietest value): a text
    "high" is the direction [1, 0], "low" [0, 1]."""

    def forward(self, mel):
        loud = mel - mel.amin(dim=(-2, -1), keepdim=True)
        half = mel.shape[-2] // 2
        return torch.stack([loud[..., half:, :].mean(dim=(-3, -2, -1)), loud[..., :half, :].mean(dim=(-3, -2, -1))], -1)


def test_occlusion_points_at_the_beep_the_query_names_in_time_and_frequency():
    """The answer is known: only the high beep (1.8 kHz, 0.7-1.0 s) is loud in the upper bands, only the low one
    (300 Hz, 0.1-0.4 s) in the lower.  The map over the log-mel peaks inside the named beep's time x band region."""
    encoder = _audio_encoder(max_seconds=2.0)
    encoder.model, encoder.output_dim = _HighLow(), 2
    model = ExplainModel({"audio": encoder}, _Identity())
    clip = _beeps([(300, 0.1, 0.4), (1800, 0.7, 1.0)])
    component = PLUGINS["explainer"].get("occlusion")
    for direction, (t0, t1), (b0, b1) in (([1.0, 0.0], (0.7, 1.0), (20, 40)), ([0.0, 1.0], (0.1, 0.4), (0, 20))):
        result = explain(component, component.params(), model, "audio", clip, torch.tensor([direction]))
        assert result.canvas is not None and result.attributions.shape == result.canvas.background.shape
        x, y = peak(result.attributions)
        left, right, _, _ = result.canvas.extent
        seconds = left + x / result.attributions.shape[1] * (right - left)
        assert t0 <= seconds <= t1 and b0 <= y <= b1, (direction, seconds, y)
        assert result.details["fill"] == "mean"


# ---------------------------------------------------------------------------------------------- the command


def _wav(path, clip):
    soundfile.write(path, clip.samples, clip.sample_rate)
    return path


def test_explain_writes_a_map_over_the_spectrogram_of_an_audio_file(capfd, trained_audio_run, tmp_path):
    clip = _wav(tmp_path / "two.wav", _beeps([(300, 0.1, 0.4), (1800, 0.7, 1.0)]))
    text = "a long high beep"
    result = cli(capfd, "explain", trained_audio_run, "--audio", clip, "--text", text, "--param", "stride=0.5",
                 "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["map.npy", "overlay.png", "words.html", "words.json"]
    values = np.load(out / "map.npy")
    n_mels = 40  # recipes/audio-quickstart.yaml
    assert values.shape[0] == n_mels and abs(values.shape[1] * 0.016 - 1.2) < 0.05 and np.isfinite(values).all()
    record = json.loads((out / "words.json").read_text())
    assert record["audio"]["method"] == "occlusion" and record["audio"]["shape"] == list(values.shape)
    assert [w["word"] for w in record["words"]] == text.split()
    assert "audio: occlusion (8 x 8 patches); the map peaks at seconds" in result.stdout


def test_explain_audio_bad_input_gets_a_clear_message_and_exit_2(capfd, trained_audio_run, trained_run, tmp_path):
    (tmp_path / "bad.wav").write_text("not a sound")
    clip = _wav(tmp_path / "ok.wav", _beeps([(300, 0.1, 0.4)]))
    picture = tmp_path / "p.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 30, 30)).save(picture)
    cases = [
        (trained_audio_run, ["--audio", tmp_path / "bad.wav"], "--audio: " + str(tmp_path / "bad.wav") + ": not a readable sound file"),
        (trained_audio_run, ["--audio", tmp_path / "absent.wav"], "--audio: no such file"),
        (trained_audio_run, ["--audio", clip, "--method", "gradcam"],
         "--method: 'gradcam' explains image, not audio; for audio: occlusion"),
        (trained_audio_run, ["--audio", clip, "--image", picture], "explain: give one item to explain"),
        (trained_run, ["--audio", clip], "explain needs a 'audio' model and a text model, and it has no audio model"),
    ]
    for run, args, message in cases:
        result = cli(capfd, "explain", run, *args, "--text", "a long high beep", "--out", tmp_path / "out")
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- the report


class _Words(torch.nn.Module):
    """A text model of two words: "high" is the direction [1, 0], anything else [0, 1]."""

    output_dim = 2

    class preprocessor:  # noqa: N801 -- a stand-in with the two methods ExplainModel.batch calls
        def __call__(self, text):
            return text

        @staticmethod
        def collate(texts):
            return list(texts)

    preprocessor = preprocessor()

    def forward(self, texts):
        return torch.tensor([[1.0, 0.0] if "high" in t else [0.0, 1.0] for t in texts])


def test_the_reports_explained_results_of_a_sound_lie_over_its_spectrogram(tmp_path, plugins):
    """eval.explain: true for a first modality Grad-CAM does not explain: occlusion's maps, drawn over each clip's
    log-mel (the canvas) in explained.png, the map of a high beep peaking in the upper bands for a "high" query."""
    from xmcore.data import Split
    from xmcore.explain.gallery import report_explainer
    from xmcore.report import explained_gallery

    encoder = _audio_encoder(max_seconds=2.0)
    encoder.model, encoder.output_dim = _HighLow(), 2
    clips = [_beeps([(1800, 0.2, 0.5)]), _beeps([(300, 0.6, 0.9)]), _beeps([(300, 0.1, 0.3), (1800, 0.7, 1.0)])]
    texts = ["a high beep", "a low beep", "a low beep then a high one"]
    split = Split(("audio", "text"), {"audio": clips, "text": texts}, np.arange(3))
    embeddings = {"audio": np.eye(3, dtype=np.float32), "text": np.eye(3, dtype=np.float32)}
    assert report_explainer(None, {"audio": encoder, "text": _Words()}, _Identity(), plugins, "audio") is None  # unset: no
    explainer = report_explainer(True, {"audio": encoder, "text": _Words()}, _Identity(), plugins, "audio")
    assert explained_gallery(split, embeddings, tmp_path / "explained.png", explainer, k=2) == "explained.png"
    checked = 0
    with np.load(tmp_path / "explained.npz") as stored:
        assert str(stored["method"]) == "occlusion" and stored["results"].shape == (3, 2)
        for row, query in enumerate(stored["query"]):
            for rank, clip in enumerate(stored["results"][row]):
                values = stored[f"map_{row}_{rank}"]
                assert values.shape[0] == 40 and values.max() > values.min()
                if "high" in texts[query] and clip == 0:  # the high beep alone, asked for "high"
                    assert peak(values)[1] > 20, peak(values)
                    checked += 1
    assert checked == 2
