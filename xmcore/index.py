"""Kept for compatibility: the search side now lives in the package :mod:`xmcore.search` (gallery, index folder
format, FAISS construction, query model, build).  Code that imports ``xmcore.index`` keeps working; new code
imports from ``xmcore.search``."""

from xmcore.search import (
    FORMAT,
    INDEX_TYPES,
    GalleryItem,
    IndexOptions,
    QueryModel,
    SearchIndex,
    build_index,
    describe_item,
    export_model,
    gallery_items,
    new_faiss_index,
    read_manifest,
    results_table,
    set_search_params,
    train_sample,
    verify,
)

__all__ = [
    "FORMAT", "INDEX_TYPES", "GalleryItem", "IndexOptions", "QueryModel", "SearchIndex", "build_index",
    "describe_item", "export_model", "gallery_items", "new_faiss_index", "read_manifest", "results_table",
    "set_search_params", "train_sample", "verify",
]
