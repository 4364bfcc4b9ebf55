"""Errors a user can act on.  The CLI prints them without a traceback.

Exit status, one rule for every command:

* **2 -- bad input**: the command cannot start, or cannot go on, because of what it was given: an
  argument or option, a recipe or override, a path, or a file or folder it reads (missing, unreadable,
  malformed, in the wrong state).  Fix the input and run again.  :class:`XmcoreError` and its
  subclasses mean this unless they say otherwise; argparse's own usage errors are 2 as well.
* **1 -- a failure while running**: valid input, but the work itself failed (training diverged, an
  internal consistency check did not hold, every cell of a sweep failed): :class:`RunError`.
  An unexpected exception (a bug) also exits 1, with its traceback.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class XmcoreError(Exception):
    """An error caused by input the user controls; its message says what to fix.  Exit status 2."""

    exit_code = 2


class RunError(XmcoreError):
    """The input was valid but the work failed while running (e.g. the model diverged).  Exit status 1."""

    exit_code = 1


class RecipeError(XmcoreError):
    """A recipe (or an override) does not validate.  One line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class PluginError(XmcoreError):
    """Plugins conflict, or a component is not available."""


class QueryError(XmcoreError):
    """A query file (``xmcore search --<modality> FILE``, an upload to ``xmcore serve``) cannot be used; the
    message says why, without the file's name (the caller adds it).  ``too_large``: it is beyond a bound
    (size, duration), which ``xmcore serve`` answers with 413 instead of 422."""

    def __init__(self, message: str, too_large: bool = False):
        super().__init__(message)
        self.too_large = too_large


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"did you mean 'x'? "`` for the closest choice, or ``""``."""
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"did you mean '{match[0]}'? " if match else ""
