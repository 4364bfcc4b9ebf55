"""Kept for compatibility: ``xmcore serve``'s server now lives in :mod:`xmcore.search.server`.  Code that imports
``xmcore.serve`` keeps working; new code imports from ``xmcore.search.server``."""

from xmcore.search.server import (
    MAX_K,
    MAX_QUERY_CHARS,
    MAX_UPLOAD_BYTES,
    AddressError,
    BodyLimit,
    Detail,
    Explainers,
    ExplainRefused,
    bind,
    create_app,
    serve,
)

__all__ = [
    "MAX_K", "MAX_QUERY_CHARS", "MAX_UPLOAD_BYTES", "AddressError", "BodyLimit", "Detail", "ExplainRefused",
    "Explainers", "bind", "create_app", "serve",
]
