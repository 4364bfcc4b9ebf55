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


def _limited(limit_bytes):
    """A ``preexec_fn`` that caps the size of any file the child writes (``ulimit -f``): a write past it fails
    with EFBIG, as a full disk fails with ENOSPC."""
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))


def test_a_write_the_file_system_refuses_is_one_error_naming_the_file_and_leaves_nothing(tmp_path):
    import subprocess
    import sys

    target = tmp_path / "out" / "metrics.json"
    code = ("import sys\nfrom xmcore import io\ntry:\n    io.atomic_write_text(sys.argv[1], 'x' * 200_000)\n"
            "except io.WriteError as exc:\n    print(exc.exit_code, exc)\n")
    result = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=60,
                            preexec_fn=_limited(64 * 1024))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout.startswith(f"2 {target}: cannot write it (File too large);"), result.stdout
    assert "ulimit -f" in result.stdout
    assert os.listdir(target.parent) == []  # no half-written file, no temporary file


def test_explain_into_a_full_place_exits_2_with_one_line(trained_run, tmp_path):
    """A command whose outputs cannot be written says so in one line (exit 2), not with a traceback."""
    import subprocess
    import sys

    from PIL import Image

    from xmcore.testing import offline_env

    picture = tmp_path / "red.png"
    Image.new("RGB", (32, 32), "red").save(picture)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "xmcore", "explain", str(trained_run), "--image", str(picture),
                             "--text", "a red circle", "--out", str(out)], capture_output=True, text=True, timeout=300,
                            env=offline_env({"OMP_NUM_THREADS": "1"}), preexec_fn=_limited(4 * 1024))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "cannot write it (File too large)" in result.stderr.strip().splitlines()[-1]
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


def test_a_torch_save_the_file_system_refuses_is_one_error_and_leaves_nothing(tmp_path):
    """Checkpoints (AtomicCheckpointIO) and an index's weights go through atomic_torch_save: torch's zip writer
    reports a full disk as a RuntimeError ("unexpected pos"), which must become the same one-line WriteError."""
    import subprocess
    import sys

    target = tmp_path / "checkpoints" / "last.ckpt"
    code = ("import sys, torch\nfrom xmcore import io\ntry:\n    io.atomic_torch_save({'w': torch.zeros(262144)}, sys.argv[1])\n"
            "except io.WriteError as exc:\n    print(exc.exit_code, exc)\n")
    result = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=120,
                            preexec_fn=_limited(64 * 1024))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stdout.startswith(f"2 {target}: cannot write it"), result.stdout
    assert os.listdir(target.parent) == []  # no half-written file, no temporary file

    from xmcore.io import atomic_torch_save  # and where it fits, the file is whole and loads
    import torch

    atomic_torch_save({"w": torch.arange(4)}, target)
    assert torch.load(target, weights_only=True)["w"].tolist() == [0, 1, 2, 3] and os.listdir(target.parent) == ["last.ckpt"]
