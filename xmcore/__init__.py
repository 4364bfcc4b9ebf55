"""xmcore: a plugin-based framework for cross-modal retrieval.

The core defines the extension points (:mod:`xmcore.hookspecs`), the recipe schema
(:mod:`xmcore.recipe`), the plugin manager (:mod:`xmcore.plugins`), the Lightning
training module (:mod:`xmcore.module`) and the evaluator (:mod:`xmcore.evaluation`).
Everything a recipe names by ``name`` comes from a plugin.
"""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("xmcore")
"""Marker for plugin hook implementations: ``@xmcore.hookimpl``."""

from xmcore.registry import BuildContext, Params, RecipePath, RecipePathOrName  # noqa: E402

__all__ = ["BuildContext", "Params", "RecipePath", "RecipePathOrName", "__version__", "hookimpl"]
