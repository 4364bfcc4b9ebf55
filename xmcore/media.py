"""Items as files, for search: a query file read into an item, an item without a file written as one,
and the media types an index serves.

The core knows two modalities' files itself -- texts are strings, images are read with PIL -- and
asks the rest of the item's plugin, through two optional methods:

* ``encoder.read_query(file)`` (see :class:`xmcore.components.Encoder`) turns an open binary file
  (``xmcore search --<modality> FILE``, an upload to ``xmcore serve``) into a raw item of the
  encoder's modality, or raises :class:`xmcore.errors.QueryError` saying why it cannot.  A modality
  takes query files when its encoder has this method (images: always, through PIL).
* ``item.to_file()`` returns a file's bytes and suffix (``.png``, ``.flac``...) for an item that has
  no file of its own (generated data), so that an index can show it.

What a browser gets is decided by the media type (``mimetypes``, from the suffix), never by the
modality's name: pictures are shown, anything an HTML media element plays gets controls.
"""

from __future__ import annotations

import io
import mimetypes
from pathlib import Path
from typing import Any, BinaryIO, Callable

from xmcore.errors import QueryError

MAX_PIXELS = 50_000_000

# Top-level media types that are documents, programs, fonts or containers: an index never serves them,
# nor a subtype that may carry markup or script (SVG, HTML, XML), whatever folder a path points into.
NOT_SERVED = frozenset({"application", "example", "font", "message", "model", "multipart", "text"})


def servable_type(name: str | Path | None) -> str | None:
    """The media type a file is served as (from its name), or ``None`` for one an index never serves."""
    if not name:
        return None
    kind = mimetypes.guess_type(str(name), strict=False)[0]
    if kind is None or kind.split("/")[0] in NOT_SERVED or "xml" in kind or "html" in kind or "svg" in kind:
        return None
    return kind


def open_image(file: str | Path | BinaryIO):
    """An RGB PIL image from a path or binary file.  One of more than ``MAX_PIXELS`` is refused from its header,
    before anything is decoded: a decompression bomb (a small file whose header claims 100,000 x 100,000
    pixels) raises :class:`~xmcore.errors.QueryError` (``too_large``) instead of taking gigabytes."""
    from PIL import Image

    try:
        opened = Image.open(file)
    except Image.DecompressionBombError as exc:  # PIL's own limit, at twice Image.MAX_IMAGE_PIXELS
        raise QueryError(f"image too large ({exc})", too_large=True) from None
    with opened as im:
        if im.width * im.height > MAX_PIXELS:
            raise QueryError(f"image too large ({im.width} x {im.height} pixels: more than "
                             f"{MAX_PIXELS // 1_000_000} megapixels)", too_large=True)
        return im.convert("RGB")


def read_image(file: BinaryIO):
    """An RGB PIL image from an image file (at most ``MAX_PIXELS``): the core's reader of image queries."""
    try:
        return open_image(file)
    except QueryError:
        raise
    except Exception as exc:  # noqa: BLE001 -- PIL raises many types for bad input; none may take a server down
        raise QueryError(f"not a readable image (expected PNG, JPEG, WebP, GIF or BMP; {type(exc).__name__})") from None


def query_reader(encoder: Any, modality: str) -> Callable[[BinaryIO], Any] | None:
    """What reads a query file of ``modality`` for ``encoder``: its ``read_query``, PIL for images, or ``None``."""
    reader = getattr(encoder, "read_query", None)  # optional: an encoder need not subclass xmcore's Encoder
    if reader is not None:
        return reader
    return read_image if modality == "image" else None


def read_query_file(source: str | Path | bytes, reader: Callable[[BinaryIO], Any], label: str) -> Any:
    """``reader`` applied to a query file -- a path, or a file's bytes -- for ``xmcore search``, ``xmcore
    explain`` and the Python API alike; any problem is an :class:`~xmcore.errors.XmcoreError` that starts
    with ``label`` (the option or item it came from) and says what is wrong."""
    from xmcore.errors import XmcoreError

    shown = "" if isinstance(source, (bytes, bytearray)) else f" {source}"
    try:
        if isinstance(source, (bytes, bytearray)):
            return reader(io.BytesIO(source))
        with open(source, "rb") as fh:
            return reader(fh)
    except FileNotFoundError:
        raise XmcoreError(f"{label}: no such file{shown}") from None
    except IsADirectoryError:
        raise XmcoreError(f"{label}:{shown} is a folder; give a file") from None
    except OSError as exc:
        raise XmcoreError(f"{label}: cannot read{shown} ({exc.strerror or exc})") from None
    except QueryError as exc:
        raise XmcoreError(f"{label}:{shown + ':' if shown else ''} {exc}") from None


def item_file(item: Any) -> tuple[bytes, str] | None:
    """A materialised item as a file's bytes and suffix, if it can be one: ``item.to_file()``, or a PNG of a
    PIL image.  Strings (captions) and items without either have none."""
    to_file = getattr(item, "to_file", None)
    if to_file is not None:
        data, suffix = to_file()
        return bytes(data), suffix
    if hasattr(item, "save") and hasattr(item, "convert"):  # a PIL image
        buffer = io.BytesIO()
        item.convert("RGB").save(buffer, format="PNG")
        return buffer.getvalue(), ".png"
    return None
