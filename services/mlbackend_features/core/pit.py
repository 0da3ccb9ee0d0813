"""Point-in-time semantics shared by online and historical reads and by every backend.

For a query (entity, as-of time) the candidate is the entity's latest stored row with
``event_time <= as_of``; among rows with the same event time the one committed last
wins (higher commit sequence, then later position in its batch), exactly as the online
store's "newest event time wins, ties go to the later write" rule. The candidate
counts only within the view's TTL: ``as_of - event_time <= ttl`` (TTL 0 = forever).
Otherwise the value is null with status EXPIRED; with no candidate, NOT_FOUND.

A store finds candidates (in SQL, in Redis...); :func:`cells` turns a candidate into
the values and statuses a read returns (:func:`online_cells` and :func:`as_of_cells`
straight from the stored rows, as reads do), so the status rules live only here.
:func:`as_of_join` is the reference implementation the stores are tested against.
"""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from mlbackend_features.core import codec
from mlbackend_features.core.model import Cell, Scalar, Status, StoredRows


class Candidate(NamedTuple):
    event_us: int
    values: dict[str, Scalar]


def is_expired(event_us: int, as_of_us: int, ttl_us: int) -> bool:
    return ttl_us > 0 and as_of_us - event_us > ttl_us


def cells(
    candidate: Candidate | None, features: Sequence[str], as_of_us: int, ttl_us: int
) -> list[Cell]:
    """One cell per feature for what the store found at ``as_of_us``."""
    if candidate is None:
        missing = Cell(None, Status.NOT_FOUND, None)
        return [missing] * len(features)
    event_us = candidate.event_us
    if is_expired(event_us, as_of_us, ttl_us):
        expired = Cell(None, Status.EXPIRED, event_us)
        return [expired] * len(features)
    out: list[Cell] = []
    for name in features:
        value = candidate.values.get(name)
        out.append(
            Cell(value, Status.PRESENT, event_us)
            if value is not None
            else Cell(None, Status.NULL_VALUE, event_us)
        )
    return out


def missing_cells(count: int) -> list[Cell]:
    """What a read returns for an entity with no candidate."""
    return [Cell(None, Status.NOT_FOUND, None)] * count


def online_cells(
    found: Sequence[tuple[int, str] | None], now_us: int, decoder: codec.RowDecoder, ttl_us: int
) -> list[Sequence[Cell]]:
    """``cells`` of each candidate an online read found (stored as ``(event_us,
    payload)``; None: no candidate), decoding only the fields ``decoder`` reads, nothing
    at all for an expired one, and a hot entity's row not again (``present_recent``)."""
    return _stored_cells(found, itertools.repeat(now_us), decoder.present_recent, decoder, ttl_us)


def as_of_cells(
    found: Sequence[tuple[int, str] | None],
    as_of: Sequence[int],
    decoder: codec.RowDecoder,
    ttl_us: int,
) -> list[Sequence[Cell]]:
    """``online_cells`` of every candidate an as-of join found at its own time (a
    historical retrieval runs it for every entity row), without keeping rows."""
    if len(found) != len(as_of):
        raise ValueError(f"{len(found)} candidates for {len(as_of)} times")
    return _stored_cells(found, as_of, decoder.present, decoder, ttl_us)


def _stored_cells(
    found: Iterable[tuple[int, str] | None],
    as_of: Iterable[int],
    present: Callable[[str, int], Sequence[Cell]],
    decoder: codec.RowDecoder,
    ttl_us: int,
) -> list[Sequence[Cell]]:
    """The one loop of both: a candidate's cells at its time, ``present`` decoding."""
    missing = missing_cells(len(decoder.fields))
    out: list[Sequence[Cell]] = []
    append = out.append
    for hit, as_of_us in zip(found, as_of, strict=False):  # online: one time, repeated
        if hit is None:
            append(missing)
        elif ttl_us > 0 and as_of_us - hit[0] > ttl_us:  # is_expired, inlined
            append([Cell(None, Status.EXPIRED, hit[0])] * len(missing))
        else:
            append(present(hit[1], hit[0]))
    return out


def cells_of(stored: StoredRows) -> list[Sequence[Cell]]:
    """The rows of a chunk that carries stored rows."""
    return as_of_cells(stored.joined.rows(), stored.as_of, stored.decoder, stored.ttl_us)


class HistoryRow(NamedTuple):
    """A stored row in commit order (the order rows were acknowledged)."""

    entity: str
    event_us: int
    values: dict[str, Scalar]


def as_of_join(
    history: Iterable[HistoryRow], queries: Sequence[tuple[str, int]]
) -> list[Candidate | None]:
    """Reference as-of join: per query, the candidate row, or None."""
    per_entity: dict[str, list[tuple[int, int, dict[str, Scalar]]]] = defaultdict(list)
    for position, row in enumerate(history):
        per_entity[row.entity].append((row.event_us, position, row.values))
    for rows in per_entity.values():
        rows.sort(key=lambda r: (r[0], r[1]))
    out: list[Candidate | None] = []
    for entity, as_of in queries:
        rows = per_entity.get(entity, [])
        # Everything with event time <= as_of, whatever its commit position.
        end = bisect.bisect_right(rows, as_of, key=lambda r: r[0])
        out.append(Candidate(rows[end - 1][0], rows[end - 1][2]) if end else None)
    return out
