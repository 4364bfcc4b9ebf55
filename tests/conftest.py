import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


@pytest.fixture(scope="session")
def plugins():
    from xmcore.plugins import load_plugins

    return load_plugins()


@pytest.fixture(scope="session")
def example_plugin_path(tmp_path_factory):
    """The third-party fixture package, installed with pip into its own folder (put it on PYTHONPATH)."""
    target = tmp_path_factory.mktemp("site")
    src = ROOT / "tests" / "fixtures" / "xmcore-example-plugin"
    build = tmp_path_factory.mktemp("build")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(src)],
        check=True,
        cwd=build,
        env={**os.environ, "PIP_NO_INPUT": "1"},
    )
    return target
