"""The search side of xmcore: ``xmcore index``, ``xmcore search`` and ``xmcore serve``.

    xmcore index RUN_DIR --out INDEX_DIR [--data KEY=VALUE ...] [--index flat|hnsw|ivfpq]
    xmcore search INDEX_DIR --text "a red circle" [-k 10] [--json]
    xmcore search INDEX_DIR --<modality> FILE      (a query file: --image photo.png, or any modality whose
                                                   encoder reads files, see xmcore.media)

One file per part:

    gallery.py      the gallery's items and their metadata, embedded in resumable shards
    folder.py       the index folder format: layout, manifest, checksums, verify, the resume state
    faiss_index.py  FAISS construction: index kinds and parameters, search-time parameters
    query.py        the stored model (export_model, QueryModel) and an index opened for searches (SearchIndex)
    predict.py      embedding with Lightning's predict on one process or many (``trainer.devices=N
                    trainer.strategy=ddp``): shards dealt out to the ranks, each rank writing its own
    build.py        build_index: the phases of ``xmcore index``
    server.py       ``xmcore serve``: the HTTP API (imported on its own: ``import xmcore.search`` imports no
                    FastAPI); page.html, its search page; batching.py, concurrent searches as one batch
"""

from xmcore.search.build import build_index
from xmcore.search.faiss_index import INDEX_TYPES, IndexOptions, new_faiss_index, set_search_params, train_sample
from xmcore.search.folder import FORMAT, read_manifest, verify
from xmcore.search.gallery import GalleryItem, describe_item, gallery_items
from xmcore.search.query import QueryModel, SearchIndex, export_model, results_table

__all__ = [
    "FORMAT", "INDEX_TYPES", "GalleryItem", "IndexOptions", "QueryModel", "SearchIndex", "build_index",
    "describe_item", "export_model", "gallery_items", "new_faiss_index", "read_manifest", "results_table",
    "set_search_params", "train_sample", "verify",
]
