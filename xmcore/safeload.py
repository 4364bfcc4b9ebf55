"""Reading weights without running code, and noticing when a file changed.

A torch file (a Lightning checkpoint, an index's ``model/weights.pt``, an encoder's ``.pt``) is a zip archive
whose main member is a pickle.  ``torch.load(weights_only=True)`` unpickles only tensors, containers and
plain values, so a file carrying a class or a function to call is refused instead of run; but torch does not
check the archive's CRC-32s, so a flipped byte in a tensor's data loads as a silently different weight.
:func:`load_weights` checks every member's CRC-32 first (Python's ``zipfile``), then loads with
``weights_only=True``, and turns each failure into an :class:`~xmcore.errors.XmcoreError` that names the file.

The other files xmcore reads are safe by their format: the feature cache's safetensors shards are checked
against the sha256 in their ``meta.json``, an index folder against its ``manifest.json``, ``.npy``/``.npz``
files are read with ``allow_pickle=False`` (an ``.npz`` is a zip archive too, whose CRC-32s numpy checks).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from xmcore.errors import XmcoreError


def check_archive(path: str | Path, what: str = "") -> None:
    """Raise if ``path`` (a torch file) is damaged: not a complete zip archive, or a member whose bytes differ
    from their CRC-32.  ``what`` says what the file is, for the message (``"the checkpoint"``)."""
    path = Path(path)
    label = f"{path}" + (f" ({what})" if what else "")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except FileNotFoundError:
        raise XmcoreError(f"{label}: no such file") from None
    except (zipfile.BadZipFile, EOFError, OSError) as exc:  # cut short, overwritten, or the old non-zip format
        raise XmcoreError(f"{label}: not a complete torch file ({type(exc).__name__}: {exc}); it is damaged "
                          "or was cut short: restore or rebuild it") from None
    if bad is not None:
        raise XmcoreError(f"{label}: member {bad} does not match its checksum (CRC-32): the file was changed "
                          "or damaged after it was written; restore or rebuild it") from None


def load_weights(path: str | Path, what: str = "", legacy_ok: bool = False) -> Any:
    """What a torch file holds -- tensors, containers of them and plain values -- after :func:`check_archive`;
    never an object whose class the file names (``weights_only=True``).  ``legacy_ok``: a file of someone
    else's in torch's format before 1.6 (not a zip archive, so without checksums) is read unchecked."""
    import pickle
    import re

    import torch

    if not (legacy_ok and Path(path).is_file() and not zipfile.is_zipfile(path)):
        check_archive(path, what)
    label = f"{path}" + (f" ({what})" if what else "")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        named = re.search(r"GLOBAL ([\w.]+)", str(exc))
        raise XmcoreError(
            f"{label}: holds {f'a Python object ({named.group(1)})' if named else 'Python objects'}, not only weights; "
            "xmcore reads torch files with weights_only=True, so that a file cannot run code: save a state dict of "
            "tensors (model.state_dict()) instead"
        ) from None
    except (RuntimeError, EOFError, ValueError) as exc:
        raise XmcoreError(f"{label}: cannot be read as a torch file "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]})") from None
