"""Concurrent queries through the model as batches (``xmcore serve --batch-wait-ms``).

The server's event loop collects the searches that arrive within ``wait_ms`` of the first (or until
``max_batch``).  A batch then goes through two stages, each one thread: the model's thread embeds the
queries of one modality as one batch; the index's thread searches FAISS with the whole matrix and builds
the results; the loop hands each caller its own.  The stages overlap: while one batch is searched, the
next is embedded (both threads spend their time in torch and FAISS, which let go of the interpreter lock),
and searches that arrive meanwhile form the batch after.  Only the model's thread runs the model and only
the index's thread searches, so neither needs a lock.

Queries are grouped by (modality, target, k): a batch searches with one k, so an approximate index (HNSW's
candidate list grows with k) answers each query as it would alone.  An encoder embeds an item of a batch as
it embeds it alone (they mask their padding) up to float rounding, so the results are those of one query at
a time (tests/test_serve_load.py).  A group that fails to embed as a batch is embedded query by query, so
that a bad query fails alone.

``wait_ms=0`` turns batching off: one query at a time behind a lock, in a thread of the server's
threadpool, as before batching.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Pending:
    modality: str
    query: Any
    k: int
    target: str
    future: asyncio.Future


Answer = tuple[list[dict[str, Any]], list[str]]  # the results and the query encoder's notes


class QueryBatcher:
    """Searches of an opened :class:`xmcore.search.SearchIndex`, each answered as ``(results, warnings)``."""

    def __init__(self, index, wait_ms: float = 2.0, max_batch: int = 64):
        self.index, self.wait, self.max_batch = index, max(wait_ms, 0) / 1000, max(max_batch, 1)
        self.batching = self.wait > 0 and self.max_batch > 1
        self._lock = threading.Lock()  # not batching: one query at a time
        self._stages: tuple[ThreadPoolExecutor, ThreadPoolExecutor] | None = None  # batching: (model, index) threads
        self._pending: list[Pending] = []
        self._timer: asyncio.TimerHandle | None = None
        self._embedding = False  # a batch is in the model's thread: the next waits for it
        self._searching = 0  # batches embedded, in or waiting for the index's thread
        self.batches = self.queries = 0  # how many went through the model: fewer batches than queries when batched

    def search(self, modality: str, query: Any, k: int, target: str | None) -> Answer:
        """One query now, in the caller's thread, one at a time."""
        with self._lock:
            self.batches, self.queries = self.batches + 1, self.queries + 1
            return self.index.search(modality, query, k, target), self.index.query_warnings(modality, query)

    async def answer(self, modality: str, query: Any, k: int, target: str | None) -> Answer:
        """The answer to one query, batched with those that arrive with it (not batching: :meth:`search` in a thread)."""
        loop = asyncio.get_running_loop()
        if not self.batching:
            return await loop.run_in_executor(None, self.search, modality, query, k, target)
        pending = Pending(modality, query, k, target or self.index.default_target(modality), loop.create_future())
        self._pending.append(pending)
        if len(self._pending) >= self.max_batch:
            self._flush(loop)
        elif self._timer is None and not self._busy():
            self._timer = loop.call_later(self.wait, self._flush, loop)
        return await pending.future

    def close(self) -> None:
        """Stop the stages' threads (the app's shutdown; a later search starts others: a test client's
        lifespan may end and begin again around one app)."""
        stages, self._stages = self._stages, None
        for stage in stages or ():
            stage.shutdown(wait=True)
        if self._timer is not None:
            self._timer.cancel()
        # a batch whose answer can no longer reach a closed loop must not keep the next lifespan's batches waiting
        self._timer, self._embedding, self._searching, self._pending = None, False, 0, []

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._busy() or not self._pending:
            return  # the stage that is busy flushes what waits when its batch leaves
        batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
        self._embedding = True
        if self._stages is None:
            self._stages = (ThreadPoolExecutor(1, thread_name_prefix="xmcore-model"),
                            ThreadPoolExecutor(1, thread_name_prefix="xmcore-index"))
        model, searcher = self._stages
        loop.run_in_executor(model, self._embed_all, batch).add_done_callback(  # an asyncio future: called in the loop
            lambda done: self._embedded(loop, searcher, batch, done))

    def _busy(self) -> bool:
        """A batch is being embedded, or two wait for the index: a new one waits (and grows) meanwhile."""
        return self._embedding or self._searching > 1

    def _embedded(self, loop: asyncio.AbstractEventLoop, searcher: ThreadPoolExecutor, batch: list[Pending], done) -> None:
        self._embedding = False
        if done.exception() is not None:
            self._deliver(batch, done)
        else:
            self._searching += 1
            loop.run_in_executor(searcher, self._search_all, batch, done.result()).add_done_callback(
                lambda searched: self._searched(loop, batch, searched))
        self._flush(loop)  # what waited while this batch was embedded: into the model at once

    def _searched(self, loop: asyncio.AbstractEventLoop, batch: list[Pending], done) -> None:
        self._searching = max(self._searching - 1, 0)  # 0 after close(): see there
        self._deliver(batch, done)
        self._flush(loop)

    def _deliver(self, batch: list[Pending], done) -> None:
        outcomes = done.result() if done.exception() is None else [done.exception()] * len(batch)
        for pending, outcome in zip(batch, outcomes, strict=True):
            if pending.future.done():  # its caller went away
                continue
            if isinstance(outcome, BaseException):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(outcome)

    def _embed_all(self, batch: list[Pending]) -> list[Any]:
        """In the model's thread: each group of the batch embedded as one; the vector (a row) or the error of
        each query."""
        vectors: list[Any] = [None] * len(batch)
        groups: dict[tuple[str, str, int], list[int]] = defaultdict(list)
        for i, pending in enumerate(batch):
            groups[(pending.modality, pending.target, pending.k)].append(i)
        for (modality, target, _), members in groups.items():
            self.batches, self.queries = self.batches + 1, self.queries + len(members)
            try:
                self.index.check_target(target)
                found = self.index.embed_queries(modality, [batch[i].query for i in members])
            except Exception:  # noqa: BLE001 -- one query that fails must not fail the others: each alone, its own error
                found = None
            for j, i in enumerate(members):
                try:
                    vectors[i] = found[j] if found is not None else self._embed_one(batch[i])
                except Exception as exc:  # noqa: BLE001 -- handed to its caller as it is
                    vectors[i] = exc
        return vectors

    def _embed_one(self, pending: Pending):
        self.index.check_target(pending.target)
        return self.index.embed_queries(pending.modality, [pending.query])[0]

    def _search_all(self, batch: list[Pending], vectors: list[Any]) -> list[Answer | Exception]:
        """In the index's thread: the queries of each group that were embedded, searched as one matrix."""
        outcomes: list[Answer | Exception] = [v if isinstance(v, BaseException) else None for v in vectors]
        groups: dict[tuple[str, str, int], list[int]] = defaultdict(list)
        for i, pending in enumerate(batch):
            if outcomes[i] is None:
                groups[(pending.modality, pending.target, pending.k)].append(i)
        for (modality, target, k), members in groups.items():
            try:
                found = self.index.search_vectors(target, np.stack([vectors[i] for i in members]), k)
            except Exception as exc:  # noqa: BLE001 -- handed to each caller of the group
                found = [exc] * len(members)
            for i, results in zip(members, found, strict=True):
                try:
                    outcomes[i] = results if isinstance(results, BaseException) else (
                        results, self.index.query_warnings(modality, batch[i].query))
                except Exception as exc:  # noqa: BLE001 -- handed to its caller as it is
                    outcomes[i] = exc
        return outcomes
