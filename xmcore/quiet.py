"""Keep a command's output to what a user can act on.

Lightning and its dependencies print lines on every run that say nothing about *this* run, or about
xmcore's own use of Lightning, which a user cannot change: "GPU available: False", "TPU available",
a "Tip" advertising a cloud service, deprecation warnings from inside Lightning, the warning about
callbacks when xmcore's evaluation Trainer restores a checkpoint, and that Trainer's restore messages.
:func:`configure` filters exactly those (``--verbose`` shows them again); the progress bar, Lightning's
other messages and warnings, and xmcore's own notes pass.  Nothing here imports torch or Lightning:
filters attach to loggers by name, before or after Lightning is imported.
"""

from __future__ import annotations

import logging
import re
import warnings

# Logged (through logging) by Lightning; matched against the start of the message.
LOG_LINES = (
    r"GPU available: ", r"TPU available: ", r"HPU available: ", r"IPU available: ",
    r"💡 Tip: ",
    r"Loading `train_dataloader` to estimate number of stepping batches",
    r"Restoring states from the checkpoint path at ",
    r"Loaded model weights from the checkpoint at ",
)
LOGGERS = tuple(
    f"{package}.{module}"
    for package in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric")
    for module in ("utilities.rank_zero", "trainer.connectors.checkpoint_connector")
) + ("lightning_utilities.core.rank_zero",)

# Python warnings: (message regex, module regex).
WARNINGS = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", ""),  # Lightning's own use of a torch API
    (r"", r"(pytorch_lightning|lightning\.pytorch)\.utilities\._pytree"),
    (r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint", ""),  # xmcore's evaluation
)

_state = {"verbose": False}


class _Unactionable(logging.Filter):
    pattern = re.compile("|".join(LOG_LINES))

    def filter(self, record: logging.LogRecord) -> bool:
        if _state["verbose"]:
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 -- a malformed record is not ours to judge
            return True
        return not self.pattern.match(message)


_FILTER = _Unactionable()


def configure(verbose: bool = False) -> None:
    """Filter the output no user can act on, unless ``verbose``.  Safe to call more than once."""
    _state["verbose"] = verbose
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    ours = {(m, mod) for m, mod in WARNINGS}
    warnings.filters[:] = [f for f in warnings.filters if not (
        f[0] == "ignore" and (getattr(f[1], "pattern", ""), getattr(f[3], "pattern", "")) in ours)]
    if not verbose:
        for message, module in WARNINGS:
            warnings.filterwarnings("ignore", message=message, module=module)
