"""xmcore: a plugin-based framework for cross-modal retrieval.

The core defines the extension points (:mod:`xmcore.hookspecs`), the recipe schema
(:mod:`xmcore.recipe`), the plugin manager (:mod:`xmcore.plugins`), the Lightning
training module (:mod:`xmcore.module`) and the evaluator (:mod:`xmcore.evaluation`).
Everything a recipe names by ``name`` comes from a plugin.

From Python (:mod:`xmcore.api`, imported on first use, so ``import xmcore`` loads no torch)::

    model = xmcore.load("runs/shapes")                 # a run directory or an index folder
    model.encode_text(["a red circle"])                # L2-normalised embeddings
    xmcore.open_index("indexes/shapes").search(text="a red circle", k=5)
    run_dir, metrics = xmcore.run("recipes/quickstart.yaml", overrides=["seed=1"])
"""

import sys
import types

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("xmcore")
"""Marker for plugin hook implementations: ``@xmcore.hookimpl``."""

from xmcore.registry import BuildContext, Params, RecipePath, RecipePathOrName  # noqa: E402

_API = ("Hit", "Index", "Model", "RunResult", "load", "open_index", "run")

__all__ = ["BuildContext", "Params", "RecipePath", "RecipePathOrName", "__version__", "hookimpl", *_API]


def __getattr__(name: str):
    if name in _API:
        from xmcore import api

        return getattr(api, name)
    raise AttributeError(f"module 'xmcore' has no attribute '{name}'")


class _Package(types.ModuleType):
    """``xmcore.run`` is the function :func:`xmcore.api.run`, though a submodule has the same name: importing a
    submodule binds it on its package, which would turn ``xmcore.run(...)`` into "module is not callable"
    once anything had imported ``xmcore.run``.  The submodule stays where imports find it (``from xmcore.run
    import ...``, ``sys.modules["xmcore.run"]``)."""

    def __setattr__(self, name: str, value) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
