"""Audio datasets from files (csv/jsonl with an audio column, audiofolder, clotho, audiocaps) in their real
layouts, bad clips in each, DCASE task 6b's mAP@10, and the clip durations and rates `data inspect` reports."""

import json
import sys

import numpy as np
import pytest
import soundfile
import yaml

from audio_fixtures import write_audio_manifest, write_audiocaps, write_audiofolder, write_clip, write_clotho
from conftest import ROOT, cli
from xmcore.errors import XmcoreError
from xmcore.plugins import load_plugins
from xmcore.registry import BuildContext
from xmcore_audio.items import AudioFile

PLUGINS = load_plugins()
BAD_REASONS = {"missing file": 1, "unreadable audio": 2, "zero-length audio": 1, "non-finite samples": 1}
BAD_NAMES = {"missing.wav", "empty.wav", "text.wav", "zero.wav", "nan.wav"}


def build(name, base_dir, **params):
    component = PLUGINS["dataset"].get(name)
    return component.build(component.params.model_validate(params), BuildContext(base_dir=base_dir))


def clip_names(items):
    return [item.path.name for item in items]


# --------------------------------------------------------------------------- csv / jsonl with audio_column


def test_csv_audio_and_caption(tmp_path):
    write_audio_manifest(tmp_path)
    data = build("csv", tmp_path, path="data.tsv", audio_column="audio", caption_column="caption", split_column="split")
    train = data.splits["train"]
    assert train.modalities == ("audio", "text") and set(data.splits) == {"train", "test"}
    assert all(isinstance(a, AudioFile) for a in train.items["audio"])
    assert clip_names(train.items["audio"]) == [f"{n}.wav" for n in range(6)]
    assert train.items["text"][:3] == ["caption 0 of clip 0", "caption 1 of clip 0", "caption 0 of clip 1"]
    assert train.owner.tolist() == np.repeat(np.arange(6), 2).tolist()
    assert train.items["audio"][0].load().samples.shape == (2400,)  # 0.3 s at 8 kHz


def test_csv_image_and_audio_spoken_captions(tmp_path):
    write_audio_manifest(tmp_path, pair="image-audio")
    data = build("csv", tmp_path, path="data.tsv", audio_column="audio", image_column="filepath", split_column="split")
    test = data.splits["test"]
    assert test.modalities == ("image", "audio")
    assert [p.path.name for p in test.items["image"]] == ["6.png", "7.png", "8.png", "9.png"]
    assert clip_names(test.items["audio"])[:2] == ["6.wav", "6b.wav"] and test.owner.tolist()[:2] == [0, 0]


def test_jsonl_audio_column(tmp_path):
    write_audio_manifest(tmp_path, fmt="jsonl")
    data = build("jsonl", tmp_path, path="data.jsonl", audio_column="audio", caption_column="caption", split_column="split")
    assert data.modalities == ("audio", "text") and len(data.splits["test"].items["audio"]) == 4
    with pytest.raises(XmcoreError, match=r"line 1: no field 'sound'"):
        build("jsonl", tmp_path, path="data.jsonl", audio_column="sound", caption_column="caption")


def test_the_set_columns_declare_the_pair():
    params = PLUGINS["dataset"].get("csv").params
    pair = lambda **kw: params.model_validate({"path": "x", **kw}).modalities  # noqa: E731
    assert pair() == ("image", "text")
    assert pair(audio_column="a") == ("audio", "text")  # the default image column steps aside
    assert pair(audio_column="a", image_column="i") == ("image", "audio")  # ... and with an image, the caption
    assert pair(audio_column="a", image_column=None, caption_column="c") == ("audio", "text")
    resolved = params.model_validate({"path": "x", "audio_column": "a"}).model_dump()  # a run's recipe.yaml
    assert params.model_validate(resolved).modalities == ("audio", "text")
    with pytest.raises(ValueError, match="set one of them to null"):
        pair(audio_column="a", image_column="i", caption_column="c")


def test_recipe_validation_checks_encoders_against_the_columns(tmp_path, capfd):
    manifest = write_audio_manifest(tmp_path)
    quickstart = ROOT / "recipes" / "quickstart.yaml"  # image and text encoders
    data = ["data.name=csv", f"data.path={manifest}", "data.audio_column=audio", "data.caption_column=caption"]
    result = cli(capfd, "validate", quickstart, *data)
    assert result.returncode == 2
    assert "encoders.audio: missing; dataset 'csv' provides audio, text" in result.stderr
    assert "encoders.image: dataset 'csv' provides audio, text, not image: remove it" in result.stderr
    fine = cli(capfd, "validate", ROOT / "recipes" / "audio-quickstart.yaml", *data)
    assert fine.returncode == 0, fine.stderr


def test_audio_column_without_the_audio_plugin_says_what_to_install(tmp_path, monkeypatch):
    write_audio_manifest(tmp_path)
    monkeypatch.setitem(sys.modules, "xmcore_audio.items", None)  # what an environment without it imports
    with pytest.raises(XmcoreError, match=r"data.audio_column: .* pip install xmcore-audio"):
        build("csv", tmp_path, path="data.tsv", audio_column="audio", caption_column="caption")


# --------------------------------------------------------------------------- audiofolder, clotho, audiocaps


def test_audiofolder_is_class_level(tmp_path):
    write_audiofolder(tmp_path)
    data = build("audiofolder", tmp_path, root=".", templates=["the sound of a {label}", "{label}"])
    test = data.splits["test"]
    assert set(data.splits) == {"train", "val", "test"} and test.modalities == ("audio", "text")
    assert test.relevance == "label" and test.labels.tolist() == [0, 0, 1, 1]
    assert test.items["text"][:2] == ["the sound of a dog bark", "dog bark"]
    assert test.groups("text").tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [a.path.suffix for a in test.items["audio"]] == [".flac"] * 4
    (tmp_path / "empty").mkdir()
    with pytest.raises(XmcoreError, match=r"no class sub-folders \(expected ROOT/<class>/<audio>"):
        build("audiofolder", tmp_path, root="empty")


def test_clotho_splits_and_five_captions(tmp_path):
    write_clotho(tmp_path)
    data = build("clotho", tmp_path, root=".")
    assert {k: len(s.items["audio"]) for k, s in data.splits.items()} == {"train": 8, "val": 2, "test": 4}
    test = data.splits["test"]
    assert test.modalities == ("audio", "text") and test.relevance == "owner"
    assert test.items["audio"][0].path == tmp_path / "evaluation" / "clip 10, field recording.wav"  # quoted comma
    assert test.items["text"][:5] == [f"caption {k} of clip 10, field recording.wav" for k in range(1, 6)]
    assert test.owner.tolist() == np.repeat(np.arange(4), 5).tolist()
    assert test.items["audio"][0].check() is None

    only = build("clotho", tmp_path, root=".", splits={"train": "development", "test": "evaluation"})
    assert set(only.splits) == {"train", "test"}
    with pytest.raises(XmcoreError, match=r"clotho_captions_nope.csv: no such file, for split 'val' \('nope'\)"):
        build("clotho", tmp_path, root=".", splits={"train": "development", "val": "nope"})
    (tmp_path / "clotho_captions_evaluation.csv").write_text("name,text\nx.wav,hello\n")
    with pytest.raises(XmcoreError, match=r"no column 'file_name'; columns found: name, text"):
        build("clotho", tmp_path, root=".")
    with pytest.raises(ValueError, match=r"names \['name'\]; it may name \{split\}"):
        build("clotho", tmp_path, root=".", audio="{name}")


def test_audiocaps_rows_of_a_clip_share_it(tmp_path):
    write_audiocaps(tmp_path)
    data = build("audiocaps", tmp_path, root=".")
    train, test = data.splits["train"], data.splits["test"]
    assert len(train.items["audio"]) == 8 and train.owner.tolist() == list(range(8))
    assert clip_names(test.items["audio"]) == ["yt010_-x.wav", "yt011_-x.wav", "yt012_-x.wav"]
    assert test.owner.tolist() == np.repeat(np.arange(3), 5).tolist()
    assert test.items["text"][5] == "caption 0 of clip 11"

    for folder in ("train", "val", "test"):  # clips named as another download tool names them
        for clip in (tmp_path / folder).iterdir():
            clip.rename(clip.with_name(f"Y{clip.stem}_30.wav"))
    renamed = build("audiocaps", tmp_path, root=".", file_name="Y{youtube_id}_{start_time}.wav")
    assert all(a.check() is None for a in renamed.splits["test"].items["audio"])
    with pytest.raises(ValueError, match=r"names \['id'\]"):
        build("audiocaps", tmp_path, root=".", file_name="{id}.wav")


# --------------------------------------------------------------------------- bad clips, per dataset kind

TINY_ENCODERS = {
    "audio": {"name": "audio-cnn", "model_name": "test_resnet", "sample_rate": 8000, "n_mels": 16, "max_seconds": 0.5},
    "text": {"name": "lstm", "embed_dim": 8, "hidden": 8},
    "image": {"name": "timm", "model_name": "test_resnet", "img_size": 32},
}


def bad_dataset(kind, root):
    """A dataset of ``kind`` with the five bad clips among its training clips: its data section."""
    if kind == "csv-audio-text":
        return {"name": "csv", "path": str(write_audio_manifest(root, bad=True)), "audio_column": "audio",
                "caption_column": "caption", "split_column": "split"}
    if kind == "csv-image-audio":  # the bad clips are members (spoken captions) of a good picture
        return {"name": "csv", "path": str(write_audio_manifest(root, pair="image-audio", bad=True)),
                "audio_column": "audio", "image_column": "filepath", "split_column": "split"}
    if kind == "audiofolder":
        return {"name": "audiofolder", "root": str(write_audiofolder(root, bad=True))}
    if kind == "clotho":
        return {"name": "clotho", "root": str(write_clotho(root, bad=True))}
    return {"name": "audiocaps", "root": str(write_audiocaps(root, bad=True))}


def load_data(kind, tmp_path, strict):
    """The data as `xmcore run` loads it before training (cleaned and reported, or refused)."""
    from xmcore.recipe import load_recipe, validate
    from xmcore.run import build_data

    section = bad_dataset(kind, tmp_path / "data")
    modalities = ("image", "audio") if kind == "csv-image-audio" else ("audio", "text")
    recipe = {"data": {**section, "strict": strict}, "encoders": {m: TINY_ENCODERS[m] for m in modalities},
              "fusion": {"name": "linear", "dim": 8}, "loss": {"name": "infonce"}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    loaded = load_recipe(path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    return build_data(validate(loaded, PLUGINS), loaded.base_dir, run_dir), run_dir


KINDS = ["csv-audio-text", "csv-image-audio", "audiofolder", "clotho", "audiocaps"]


@pytest.mark.parametrize("kind", KINDS)
def test_bad_clips_are_skipped_with_one_warning_and_reported(kind, tmp_path, capfd):
    capfd.readouterr()
    data, run_dir = load_data(kind, tmp_path, strict=False)
    err = capfd.readouterr().err
    warnings = [line for line in err.splitlines() if "bad items" in line]
    assert len(warnings) == 1 and "skipped 5 bad items" in warnings[0], err
    train = json.loads((run_dir / "data_report.json").read_text())["splits"]["train"]
    assert train["reasons"] == BAD_REASONS
    assert train["skipped"]["audio"] == 5
    assert {p["item"].split(" of ")[0].rsplit("/", 1)[-1] for p in train["problems"]} == BAD_NAMES
    kept = {a.path.name for a in data.splits["train"].items["audio"]}
    assert kept and not kept & BAD_NAMES


@pytest.mark.parametrize("kind", KINDS)
def test_strict_refuses_bad_clips(kind, tmp_path):
    with pytest.raises(XmcoreError, match="5 bad items and data.strict is true") as refused:
        load_data(kind, tmp_path, strict=True)
    for name in BAD_NAMES:
        assert name in str(refused.value)


# --------------------------------------------------------------------------- DCASE task 6b: mAP@10


def query_vectors(orders, gallery_size):
    """Query embeddings that rank a one-hot gallery in the given orders (best first)."""
    out = np.zeros((len(orders), gallery_size), dtype=np.float32)
    for q, order in enumerate(orders):
        out[q, order] = 1.0 - 0.05 * np.arange(len(order))
    return out


def placed(target, rank, size):
    """An order of ``size`` gallery items with ``target`` at ``rank`` (1-based)."""
    order = [i for i in range(size) if i != target]
    order.insert(rank - 1, target)
    return order


def test_map_at_10_is_dcase_task_6b_for_text_to_audio():
    """t2a/mAP@10 of the `map` metric (k [10]) is DCASE's: 1/rank of a caption's one clip if in the top 10, else 0."""
    import torch

    from xmcore.data import Split
    from xmcore.evaluation import compute_metrics, rank_directions
    from xmcore.testing import build as build_component

    ranks = [1, 3, 10, 11, 1, 2, 5, 12, 1, 1, 4, 7]  # of caption j's clip j among 12 clips
    clips = np.eye(12, dtype=np.float32)
    captions = query_vectors([placed(j, r, 12) for j, r in enumerate(ranks)], 12)
    split = Split(("audio", "text"), {"audio": list(range(12)), "text": list(range(12))}, np.arange(12))
    rankings = rank_directions({"audio": torch.from_numpy(clips), "text": torch.from_numpy(captions)}, split)
    assert rankings["t2a"].ranks.tolist() == ranks
    metrics = [build_component(PLUGINS["metric"].get("map"), k=[10]), build_component(PLUGINS["metric"].get("recall"))]
    values = compute_metrics(rankings, metrics)
    by_hand = (1 + 1 / 3 + 1 / 10 + 0 + 1 + 1 / 2 + 1 / 5 + 0 + 1 + 1 + 1 / 4 + 1 / 7) / 12
    assert values["t2a/mAP@10"] == pytest.approx(by_hand, abs=1e-9)
    assert values["t2a/R@1"] == pytest.approx(4 / 12) and values["t2a/R@10"] == pytest.approx(10 / 12)


def test_audio_to_text_hit_is_any_of_the_clips_captions():
    """a2t/R@K counts a clip's query as a hit when any of its five captions is in the top K."""
    import torch

    from xmcore.data import Split
    from xmcore.evaluation import rank_directions

    owner = np.repeat(np.arange(3), 5)
    # clip 0: the captions of clips 1 and 2 first, its own best at rank 4; clips 1 and 2: their own first.
    order0 = [5, 6, 10, 2, 0, 1, 3, 4, 7, 8, 9, 11, 12, 13, 14]
    orders = [order0, list(range(5, 10)) + [0, 1, 2, 3, 4] + list(range(10, 15)), list(range(10, 15)) + list(range(10))]
    clips = torch.from_numpy(query_vectors(orders, 15))
    split = Split(("audio", "text"), {"audio": list(range(3)), "text": list(range(15))}, owner)
    r = rank_directions({"audio": clips, "text": torch.eye(15)}, split)["a2t"]
    assert r.ranks.tolist() == [4, 1, 1]
    assert np.mean(r.ranks <= 1) == pytest.approx(2 / 3) and np.mean(r.ranks <= 5) == 1.0


# --------------------------------------------------------------------------- data inspect: durations and rates


def test_data_inspect_reports_durations_and_rates_of_generated_clips(capfd):
    from xmcore_audio import TonesParams
    from xmcore_audio.tones import generate

    result = cli(capfd, "data", "inspect", ROOT / "recipes" / "audio-quickstart.yaml", "data.train=4", "data.val=0",
                 "data.test=2")
    assert result.returncode == 0, result.stderr[-2000:]
    seconds = np.array([c.seconds for c in generate(TonesParams(train=4, val=0, test=2, sample_rate=8000))
                        .splits["train"].items["audio"]])
    expected = f"audio duration (s): min {seconds.min():.2f}, mean {seconds.mean():.2f}, max {seconds.max():.2f}"
    train = result.stdout.split("[test]")[0]
    assert f"  {expected}\n" in train
    assert "  audio sample rate (Hz): 8000 (4)\n" in train
    assert "text duration" not in result.stdout  # captions describe nothing


def test_data_inspect_reports_durations_rates_and_channels_of_files(tmp_path, capfd):
    clips = [("a.wav", 0.5, 8000, 1), ("b.flac", 1.0, 16000, 1), ("c.wav", 1.5, 8000, 2)]
    rows = ["audio\tcaption\tsplit"]
    for name, seconds, rate, channels in clips:
        samples = np.full((int(seconds * rate), channels), 0.1, dtype=np.float32)
        soundfile.write(tmp_path / name, samples, rate)
        rows += [f"{name}\tthe clip {name}\ttrain", f"{name}\tthe clip {name} again\ttest"]
    (tmp_path / "clips.tsv").write_text("\n".join(rows) + "\n")
    result = cli(capfd, "data", "inspect", ROOT / "recipes" / "audio-quickstart.yaml", "data.name=csv",
                 f"data.path={tmp_path / 'clips.tsv'}", "data.audio_column=audio", "data.caption_column=caption",
                 "data.split_column=split")
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "  audio duration (s): min 0.50, mean 1.00, max 1.50\n" in out
    assert "  audio sample rate (Hz): 8000 (2), 16000 (1)\n" in out
    assert "  audio channels: 1 (2), 2 (1)\n" in out


def test_inspect_summarises_float_fields_and_counts_the_others():
    from xmcore.inspection import described

    class Item:
        def __init__(self, seconds, kind):
            self.seconds, self.kind = seconds, kind

        def describe(self):
            return {"length": self.seconds, "kind": self.kind}

    items = [Item(float(s), k) for s, k in zip(range(1, 9), "aabbbcde")] + ["no describe()"]
    assert described(items) == ["length: min 1.00, mean 4.50, max 8.00",
                                "kind: b (3), a (2), c (1), d (1), e (1)"]
    items.append(Item(9.0, "f"))
    assert described(items)[1] == "kind: b (3), a (2), c (1), d (1), e (1), and 1 more"
    assert described(["text", "only"]) == []


def test_clip_and_file_describe_the_same_clip(tmp_path):
    path = write_clip(tmp_path / "x.flac", 0, seconds=0.75, rate=16000)
    item = AudioFile(path)
    assert item.describe() == {"duration (s)": 0.75, "sample rate (Hz)": 16000, "channels": 1}
    assert item.load().describe() == {"duration (s)": 0.75, "sample rate (Hz)": 16000}


def test_data_inspect_of_three_aligned_modalities(tmp_path):
    """Pictures with written and spoken captions: every modality counted, the clips described, a grid drawn."""
    from PIL import Image

    from test_audio import tone
    from xmcore.data import RetrievalData, Split
    from xmcore.inspection import grid, inspect, summarize
    from xmcore_audio.items import Clip

    pictures = [Image.new("RGB", (16, 16), c) for c in ("red", "blue")]
    texts = ["a red square", "a crimson box", "a blue square"]
    speech = [Clip(tone(s, 8000), 8000) for s in (0.5, 1.0, 1.5)]
    split = Split(("image", "text", "audio"), {"image": pictures, "text": texts, "audio": speech}, [0, 0, 1])
    data, reports = inspect(RetrievalData({"train": split}, description="spoken"))
    out = summarize(data, reports)
    assert "  image items: 2   text items: 3   audio items: 3\n" in out
    assert "  text / audio per image: min 1, mean 1.50, max 2\n" in out
    assert "  audio duration (s): min 0.50, mean 1.00, max 1.50\n" in out
    assert "e.g. image 0 (16x16): a red square | a crimson box" in out
    assert grid(data, tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
