"""Sounds get the guard pictures get: a symbolic link out of the data folder is refused before it is read,
in a class folder and in a manifest (tests/test_hostile_data.py covers pictures)."""

import os

from audio_fixtures import write_audiofolder, write_clip
from xmcore.data import clean_split
from xmcore.plugins import load_plugins
from xmcore.registry import BuildContext


def build(name, base_dir, **params):
    component = load_plugins()["dataset"].get(name)
    return component.build(component.params.model_validate(params), BuildContext(base_dir=base_dir))


def reasons(report):
    return {os.path.basename(p["item"].split(" of ")[0]): p["reason"].split(" (")[0] for p in report["problems"]}


def test_a_sound_linked_from_outside_the_data_folder_is_refused_unread(tmp_path, monkeypatch):
    import soundfile

    root = write_audiofolder(tmp_path / "data")
    secret = write_clip(tmp_path / "outside" / "private.wav", 7)
    (root / "train" / "rain" / "link-out.wav").symlink_to(secret)
    (root / "train" / "rain" / "link-in.flac").symlink_to(root / "train" / "rain" / "0.flac")  # stays inside: fine
    read, real_read = [], soundfile.read
    monkeypatch.setattr(soundfile, "read", lambda file, *a, **k: read.append(os.path.realpath(file)) or real_read(file, *a, **k))

    data = build("audiofolder", tmp_path, root="data")
    cleaned, report = clean_split(data.splits["train"], workers=1)
    assert reasons(report) == {"link-out.wav": "symbolic link out of the data folder"}
    assert "link-in.flac" in {p.path.name for p in cleaned.items["audio"]}
    assert read and str(secret) not in read  # never opened


def test_a_manifest_row_through_a_linked_folder_is_refused(tmp_path):
    folder = tmp_path / "data"
    write_clip(folder / "clips" / "a.wav", 1)
    write_clip(tmp_path / "outside" / "b.wav", 2)
    (folder / "linked").symlink_to(tmp_path / "outside", target_is_directory=True)
    (folder / "pairs.csv").write_text("audio,caption\nclips/a.wav,a low tone\nlinked/b.wav,a higher tone\n"
                                      f"{tmp_path / 'outside' / 'b.wav'},written outside: read as written\n")
    data = build("csv", tmp_path, path="data/pairs.csv", image_column=None, audio_column="audio", caption_column="caption",
                 separator=",",
                 split_ratios=[1.0, 0.0, 0.0])
    _, report = clean_split(data.splits["train"], workers=1)
    assert reasons(report) == {"b.wav": "symbolic link out of the data folder"}
    assert report["used"]["audio"] == 2


def test_a_clotho_clip_linked_from_outside_the_dataset_is_refused(tmp_path):
    from audio_fixtures import write_clotho

    root = write_clotho(tmp_path / "clotho")
    clip = root / "development" / "clip 0, field recording.wav"
    clip.unlink()
    clip.symlink_to(write_clip(tmp_path / "outside" / "private.wav", 3))
    data = build("clotho", tmp_path, root="clotho")
    _, report = clean_split(data.splits["train"], workers=1)
    assert reasons(report) == {"clip 0, field recording.wav": "symbolic link out of the data folder"}
