"""xmcore's own files are written atomically: a temporary file beside the target, then a rename."""

import json
import os

import pytest

from xmcore import io


def test_a_failed_rename_leaves_the_old_file_intact_and_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    io.write_json(target, {"rsum": 1.5})
    before = target.read_bytes()
    renamed = []

    def refuse(src, dst):  # the rename is where a crash, a full disk or a lost mount shows up
        renamed.append((src, dst))
        raise OSError("rename refused")

    monkeypatch.setattr(os, "replace", refuse)
    for write in (lambda: io.write_json(target, {"rsum": 9.0}), lambda: io.write_yaml(target, {"a": 1}),
                  lambda: io.atomic_write_text(target, "x" * 100_000)):
        with pytest.raises(OSError, match="rename refused") as failed:
            try:
                write()
            finally:
                assert target.read_bytes() == before  # the old file, intact
                assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temporary file left
        assert failed.value.args == ("rename refused",)  # the error reaches the caller
    assert len(renamed) == 3 and all(os.path.dirname(src) == str(tmp_path) for src, _ in renamed)  # beside the target


def test_a_successful_write_replaces_the_file_with_the_usual_mode(tmp_path):
    target = tmp_path / "sub" / "recipe.yaml"
    io.write_yaml(target, {"seed": 0})
    io.write_json(target, {"seed": 1})
    assert json.loads(target.read_text()) == {"seed": 1}
    assert os.listdir(target.parent) == ["recipe.yaml"]
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
