"""The same recipe and seed, run twice on the CPU, write byte-identical metrics.json -- for each fusion."""

import pytest

from conftest import ROOT, cli
from xmcore.testing import tiny_overrides

QUICKSTART = ROOT / "recipes" / "quickstart.yaml"


@pytest.mark.parametrize("fusion", ["linear", "nonlinear", "adversarial"])
def test_the_same_seed_gives_byte_identical_metrics(fusion, plugins, tmp_path, capfd):
    # caption sampling and an augmentation per modality: the training data draws randomness too
    args = [QUICKSTART, *tiny_overrides(QUICKSTART, plugins), f"fusion.name={fusion}", "data.caption_sampling=true",
            "augment.image=[{name: random-erasing, p: 0.5}]", "augment.text=[{name: random-swap, p: 0.5}]"]
    outputs = []
    for attempt in ("first", "second"):
        result = cli(capfd, "run", *args, "--out", tmp_path / attempt)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append((tmp_path / attempt / "metrics.json").read_bytes())
    assert outputs[0] == outputs[1]
    other = cli(capfd, "run", *args, "seed=1", "--out", tmp_path / "seed1")  # the seed does reach the run
    assert other.returncode == 0 and (tmp_path / "seed1" / "metrics.json").read_bytes() != outputs[0]
