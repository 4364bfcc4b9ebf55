"""Errors a user can act on.  The CLI prints them without a traceback."""

from __future__ import annotations

import difflib
from typing import Iterable


class XmcoreError(Exception):
    """An error caused by input the user controls; its message says what to fix."""

    exit_code = 1


class RecipeError(XmcoreError):
    """A recipe (or an override) does not validate.  One line per problem."""

    exit_code = 2

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class PluginError(XmcoreError):
    """Plugins conflict, or a component is not available."""

    exit_code = 2


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"did you mean 'x'? "`` for the closest choice, or ``""``."""
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"did you mean '{match[0]}'? " if match else ""
