"""The feature store's orchestration: definitions, the write path, reads, maintenance.

Write path: validate the whole batch → append it to the offline commit log (durable,
numbered) → acknowledge; the online store is updated from the same records, and its
watermark says up to which commit it is complete. If the online store lags (a crash
between the two steps, Redis unreachable), every later write first replays the missing
commits in order, and so does start-up: nothing acknowledged is ever missing online for
long, and nothing is applied out of order.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar, cast

from mlbackend_features.core import codec, definitions, pit, validation
from mlbackend_features.core.model import (
    DEFAULT_CHUNK_ROWS,
    MAX_CHUNK_ROWS,
    MAX_ENTITY_KEYS,
    MAX_HISTORICAL_ROWS,
    MAX_KEY_STRING_BYTES,
    MAX_TIME_US,
    MIN_TIME_US,
    Actor,
    Cell,
    ColumnQuery,
    DefinitionChange,
    DefinitionSet,
    DType,
    Entity,
    EntityKey,
    FeatureService,
    FeatureView,
    HistoricalChunk,
    HistoricalQuery,
    JoinKey,
    MaterializeProgress,
    OnlineQuery,
    PushAck,
    ReadResult,
    Record,
    RowViolation,
    Scalar,
    Status,
    StoredRows,
    WriteAck,
    WriteBatch,
    now_us,
)
from mlbackend_features.core.transforms import CompiledService, StoredRef, compile_refs
from mlbackend_features.core.transforms import compile_service as compile_feature_service
from mlbackend_features.stores.definitions import Definitions, DefinitionStore
from mlbackend_features.stores.offline import NumericSummary, OfflineStore
from mlbackend_features.stores.online import OnlineStore
from mlbackend_runtime.errors import (
    DependencyUnavailable,
    FailedPrecondition,
    FieldViolation,
    InvalidInput,
    NotFound,
)

logger = logging.getLogger("mlbackend.features")

_REPLAY_BATCHES = 100
_MATERIALIZE_SLICE = 1_000
_DEFAULT_PAGE = 100
_MAX_PAGE = 1_000
_MAX_BATCH_ID = 128
MAX_PLANS = 256
"""Read plans kept (the oldest compiled go first)."""

# Stored rows (for the Arrow form) are joined and decoded in runs of about this many:
# parsing 10,000 rows in runs of 4,000 takes ~4 ms, a thousand at a time ~9 ms.
_STORED_RUN_ROWS = 4_096

# What an as-of join finds per query row: the stored (event_us, payload), or None.
Found = Sequence[tuple[int, str] | None]

# An unknown name reloads the definitions at most this often (another replica on a
# shared definition store may have just applied it).
_RELOAD_ON_MISS_SECONDS = 1.0

T = TypeVar("T")


@dataclass
class Freshness:
    """Per view: when it was last written (wall clock) and the newest event time seen."""

    last_write_us: int
    newest_event_us: int


@dataclass(frozen=True)
class ViewRead:
    """One view's share of a read: its output names, stored fields (and their decoder),
    join keys and TTL."""

    view: FeatureView
    refs: tuple[str, ...]
    fields: tuple[tuple[str, DType], ...]
    decoder: codec.RowDecoder
    join_keys: tuple[JoinKey, ...]
    ttl_us: int


@dataclass(frozen=True)
class ReadPlan:
    """A compiled read with what every call needs of the definitions, worked out once.

    ``direct``: one view, no transforms, no request inputs and the outputs in stored
    order, so a result row is that view's cells as they are."""

    compiled: CompiledService
    views: tuple[ViewRead, ...]
    known_keys: frozenset[str]
    direct: bool


@dataclass(frozen=True)
class FeatureSummary:
    name: str
    dtype: DType
    summary: NumericSummary


@dataclass(frozen=True)
class ViewStatistics:
    features: list[FeatureSummary]
    row_count: int
    start_us: int
    end_us: int
    compute_us: int


# Which values a column query may give for a join key of each dtype.
_COLUMN_KINDS = frozenset({(int, DType.INT64), (str, DType.STRING)})


class FeatureStore:
    def __init__(
        self,
        definition_store: DefinitionStore,
        offline: OfflineStore,
        online: OnlineStore,
        *,
        clock: Callable[[], int] = now_us,
    ) -> None:
        self._definition_store = definition_store
        self._offline = offline
        self._online = online
        self._clock = clock
        self._defs = Definitions({}, {}, {})
        # Read plans per (refs, service), dropped whenever the definitions change, at most
        # MAX_PLANS (callers choose the refs: any list of them makes a plan).
        self._compiled: dict[tuple[tuple[str, ...], str], ReadPlan] = {}
        # Rows the plans' decoders decoded lately (codec.RECENT_ROWS for all of them).
        self._recent_rows: codec.RecentRows = {}
        self._write_lock = asyncio.Lock()
        self._apply_lock = asyncio.Lock()
        self._online_behind = True
        # The highest sequence this process knows the online store holds with every lower
        # one: a commit right after it is applied directly, any other means another
        # replica committed in between, and the log is replayed from the watermark.
        self._applied = 0
        self._reloaded_at = float("-inf")
        self.freshness: dict[str, Freshness] = {}

    async def start(self) -> None:
        """Load definitions and replay acknowledged batches the online store misses."""
        self._defs = await self._definition_store.load()
        async with self._write_lock:
            await self._catch_up()

    async def close(self) -> None:
        await self._online.close()
        await self._offline.close()
        await self._definition_store.close()

    def now_us(self) -> int:
        return self._clock()

    @property
    def online_behind(self) -> bool:
        return self._online_behind

    # --- definitions --------------------------------------------------------------------

    async def apply(
        self, request: DefinitionSet, *, force: bool, dry_run: bool, actor: Actor
    ) -> list[DefinitionChange]:
        async with self._apply_lock:
            # Plan against the stored definitions: another replica may have applied.
            await self._reload_definitions()
            now = datetime.now(UTC)
            result = definitions.plan(self._defs, request, force=force, actor=actor, now=now)
            if dry_run:
                return result.changes
            await self._definition_store.save(result.entities, result.views, result.services)
            await self._reload_definitions()
            return result.changes

    async def refresh_definitions(self) -> None:
        """Pick up definitions another replica applied to a shared definition store."""
        async with self._apply_lock:
            await self._reload_definitions()

    async def _reload_definitions(self) -> bool:
        """Load the stored definitions; True when they differ from the ones in use."""
        loaded = await self._definition_store.load()
        self._reloaded_at = time.monotonic()
        if loaded == self._defs:
            return False
        self._defs = loaded
        self._compiled.clear()
        self._recent_rows.clear()
        return True

    async def fresh(self, lookup: Callable[[], T]) -> T:
        """``lookup()`` against the definitions in use; when it names something unknown,
        once more against the stored ones, reloaded at most every second — so a view
        another replica applied a moment ago is found without waiting for the refresh."""
        try:
            return lookup()
        except NotFound:
            if time.monotonic() - self._reloaded_at < _RELOAD_ON_MISS_SECONDS:
                raise
            async with self._apply_lock:
                changed = await self._reload_definitions()
            if not changed:
                raise
            return lookup()

    def entity(self, name: str) -> Entity:
        found = self._defs.entities.get(name)
        if found is None:
            raise NotFound(f"entity {name!r} not found")
        return found

    def feature_view(self, name: str, field: str = "name") -> FeatureView:
        found = self._defs.views.get(name)
        if found is None:
            raise NotFound(f"{field}: feature view {name!r} not found")
        return found

    def feature_service(self, ref: str, field: str = "name") -> FeatureService:
        name, _, version = ref.partition("@")
        versions = self._defs.services.get(name, [])
        if version:
            if not version.isdigit():
                raise InvalidInput.field(field, "expected 'name@version' with a number")
            found = next((s for s in versions if s.version == int(version)), None)
        else:
            found = versions[-1] if versions else None
        if found is None:
            raise NotFound(f"{field}: feature service {ref!r} not found")
        return found

    def list_entities(self, page_size: int, token: str) -> tuple[list[Entity], str]:
        items = sorted(self._defs.entities.values(), key=lambda e: e.name)
        return _page(items, lambda e: e.name, page_size, token)

    def list_feature_views(
        self, page_size: int, token: str, entity: str
    ) -> tuple[list[FeatureView], str]:
        items = sorted(
            (v for v in self._defs.views.values() if not entity or entity in v.entities),
            key=lambda v: v.name,
        )
        return _page(items, lambda v: v.name, page_size, token)

    def list_feature_services(
        self, page_size: int, token: str, name: str, all_versions: bool
    ) -> tuple[list[FeatureService], str]:
        items = [
            s
            for n, versions in sorted(self._defs.services.items())
            if not name or n == name
            for s in (versions if all_versions else versions[-1:])
        ]
        return _page(items, lambda s: f"{s.name}@{s.version:012d}", page_size, token)

    # --- writes -------------------------------------------------------------------------

    async def write(self, batch: WriteBatch) -> WriteAck:
        view = await self.fresh(lambda: self.feature_view(batch.feature_view, "batch.feature_view"))
        if len(batch.batch_id) > _MAX_BATCH_ID:
            raise InvalidInput.field("batch.batch_id", f"longer than {_MAX_BATCH_ID} characters")
        records, violations = validation.validate_batch(view, self._join_keys(view), batch)
        if violations:
            raise validation.rejection(violations)
        batch_id = batch.batch_id or uuid.uuid4().hex
        async with self._write_lock:
            commit = await self._offline.append(batch_id, view.name, records)
            # Acknowledged from here on: the online update below may lag, never lose it.
            if not commit.duplicate:
                await self._apply_online(view, records, commit.sequence)
        if not commit.duplicate:
            self._note_write(view.name, records)
        return WriteAck(batch_id, commit.row_count, commit.sequence)

    async def push(self, batches: AsyncIterator[WriteBatch]) -> AsyncIterator[PushAck]:
        """One ack per batch, in order; a rejected batch does not end the stream."""
        async for batch in batches:
            try:
                ack = await self.write(batch)
            except InvalidInput as exc:
                yield PushAck(batch.batch_id, None, exc, _violations_of(exc))
            except (NotFound, FailedPrecondition) as exc:
                yield PushAck(batch.batch_id, None, exc, ())
            else:
                yield PushAck(ack.batch_id, ack, None, ())

    async def _apply_online(self, view: FeatureView, records: list[Record], sequence: int) -> None:
        if self._online_behind or sequence != self._applied + 1:
            # Behind, or other replicas committed since our last look: never move the
            # watermark over a batch nobody has applied yet.
            await self._catch_up()
            return
        try:
            await self._online.apply(view.name, records if view.online else [], sequence)
            self._applied = sequence
        except DependencyUnavailable as exc:
            self._online_behind = True
            logger.warning("online store unavailable, will replay from the log: %s", exc)

    async def _catch_up(self) -> None:
        """Replay every committed batch past the online watermark, in order (write lock held)."""
        try:
            applied = await self._online.applied_sequence()
            replayed = 0
            while batches := await self._offline.committed_after(applied, _REPLAY_BATCHES):
                for batch in batches:
                    view = self._defs.views.get(batch.feature_view)
                    online = view is not None and view.online
                    await self._online.apply(
                        batch.feature_view, batch.records if online else [], batch.sequence
                    )
                    applied = batch.sequence
                    replayed += 1
            if replayed:
                logger.info("replayed %d committed batch(es) into the online store", replayed)
            self._applied = applied
            self._online_behind = False
        except DependencyUnavailable as exc:
            self._online_behind = True
            logger.warning("online store unavailable, replay pending: %s", exc)

    async def sync_online(self) -> bool:
        """Apply what the log holds past the online watermark: a pending replay, or the
        batches other replicas committed to a shared log. True when nothing is missing."""
        async with self._write_lock:
            await self._catch_up()
        return not self._online_behind

    def _note_write(self, view: str, records: Sequence[Record]) -> None:
        newest = max(r.event_us for r in records)
        state = self.freshness.get(view)
        self.freshness[view] = Freshness(
            self._clock(), max(newest, state.newest_event_us) if state else newest
        )

    # --- reads --------------------------------------------------------------------------

    def compile(self, refs: Sequence[str], service: str) -> ReadPlan:
        """How to read ``refs`` or ``service``: compiled once, kept until definitions change."""
        key = (tuple(refs), service)
        plan = self._compiled.get(key)
        if plan is None:
            if refs and service:
                raise InvalidInput.field("feature_service", "set feature_refs or feature_service")
            if service:
                compiled = compile_feature_service(
                    self.feature_service(service, "feature_service"), self._defs.views
                )
            else:
                compiled = compile_refs(refs, self._defs.views, "feature_refs")
            plan = self._read_plan(compiled)
            self._compiled[key] = plan
            if len(self._compiled) > MAX_PLANS:
                # Reads on several threads may evict at once: a lost race is harmless.
                with contextlib.suppress(KeyError, RuntimeError, StopIteration):
                    del self._compiled[next(iter(self._compiled))]
        return plan

    def _read_plan(self, compiled: CompiledService) -> ReadPlan:
        by_view: dict[str, list[StoredRef]] = {}
        for ref in compiled.stored:
            by_view.setdefault(ref.view, []).append(ref)
        views = []
        for name, refs in by_view.items():
            view = self._defs.views[name]
            dtypes = {f.name: f.dtype for f in view.features}
            fields = tuple((r.feature, dtypes[r.feature]) for r in refs)
            views.append(
                ViewRead(
                    view,
                    tuple(r.ref for r in refs),
                    fields,
                    codec.RowDecoder(fields, self._recent_rows),
                    tuple(self._join_keys(view)),
                    view.ttl_us,
                )
            )
        direct = (
            len(views) == 1
            and not compiled.steps
            and not compiled.request_inputs
            and views[0].refs == compiled.outputs
        )
        known = frozenset(k.name for v in views for k in v.join_keys)
        return ReadPlan(compiled, tuple(views), known, direct)

    def _join_keys(self, view: FeatureView) -> list[JoinKey]:
        keys: list[JoinKey] = []
        for name in view.entities:
            keys.extend(self._defs.entities[name].join_keys)
        return keys

    @staticmethod
    def _entity_strings(
        plan: ReadPlan,
        keys: Sequence[EntityKey],
        field: str,
        violations: list[FieldViolation],
        member: str = "",
    ) -> list[list[str]]:
        """Per view read: the encoded entity key of every request row; defects are
        appended to ``violations`` (a join key two views share, once per view)."""
        out = [
            validation.entity_strings(v.join_keys, keys, field, violations, member)
            for v in plan.views
        ]
        validation.check_unknown_keys(keys, plan.known_keys, field, violations, member)
        return out

    @staticmethod
    def _request_inputs(
        compiled: CompiledService,
        supplied: dict[str, Scalar],
        field: str,
        violations: list[FieldViolation],
    ) -> dict[str, Cell]:
        """The request-input cells of one row; defects are appended to ``violations``."""
        cells: dict[str, Cell] = {}
        declared = {r.name for r in compiled.request_inputs}
        for name in supplied:
            if name not in declared:
                violations.append(
                    FieldViolation(f"{field}.{name}", "not a request input of the service")
                )
        for request_input in compiled.request_inputs:
            name = request_input.name
            given = supplied.get(name)
            value, problem = validation.check_value(request_input, given)
            if not problem and value is None and not request_input.nullable:
                problem = (
                    "required request input is missing"
                    if given is None
                    else f"{given} counts as missing (nan_policy AS_NULL) and the input is required"
                )
            if problem:
                violations.append(FieldViolation(f"{field}.{name}", problem))
            cells[name] = Cell(value, Status.REQUEST_INPUT, None)
        return cells

    async def request_input_names(self, refs: Sequence[str], service: str) -> frozenset[str]:
        """The request inputs a read of ``refs`` or ``service`` takes, by name."""
        plan = await self.fresh(lambda: self.compile(refs, service))
        return frozenset(r.name for r in plan.compiled.request_inputs)

    async def read_online(self, query: OnlineQuery) -> ReadResult:
        plan, per_view, inputs = await self.fresh(lambda: self._online_plan(query))
        now = self._clock()
        found = []
        for read, keys in zip(plan.views, per_view, strict=True):
            stored = await self._online.read(read.view.name, list(dict.fromkeys(keys)))
            hits = list(map(stored.get, keys))
            found.append(pit.online_cells(hits, now, read.decoder, read.ttl_us))
        return self._online_result(plan, inputs, found)

    def read_online_now(self, query: OnlineQuery) -> ReadResult | None:
        """:meth:`read_online` without waiting on anything: the result when the online
        store holds every value in memory (or answers without the event loop, as SQLite
        does), else None and the caller takes the asynchronous path (which also reloads
        definitions that name something unknown). Safe on any thread."""
        try:
            plan, per_view, inputs = self._online_plan(query)
        except NotFound:
            return None
        return self._read_now(plan, per_view, inputs)

    def read_column_now(self, query: ColumnQuery) -> ReadResult | None:
        """:meth:`read_online_now` of the usual read, its entity keys given as one column.
        None also where the column is not simply the plan's one join key (or anything is
        wrong with the query): the caller then reads it as an :class:`OnlineQuery`, whose
        path checks everything and reports what is wrong. Safe on any thread."""
        values = query.values
        if not 0 < len(values) <= MAX_ENTITY_KEYS:
            return None
        try:
            plan = self.compile(query.feature_refs, query.feature_service)
        except NotFound:
            return None
        if plan.compiled.request_inputs or plan.known_keys != {query.join_key}:
            return None
        kind = type(values[0])  # the same for every value
        for read in plan.views:
            dtype = read.join_keys[0].dtype if len(read.join_keys) == 1 else None
            if not read.view.online or (kind, dtype) not in _COLUMN_KINDS:
                return None
        if kind is int:
            keys = list(map(codec.encode_int_key, cast(list[int], values)))
        else:
            texts = cast(list[str], values)
            if max(map(len, texts)) * 4 > MAX_KEY_STRING_BYTES:
                return None  # maybe too long in UTF-8: the general path measures it
            keys = [codec.encode_key((v,)) for v in texts]
        return self._read_now(plan, [keys] * len(plan.views), ())

    def _read_now(
        self, plan: ReadPlan, per_view: Sequence[Sequence[str]], inputs: Sequence[dict[str, Cell]]
    ) -> ReadResult | None:
        now = self._clock()
        found = []
        for read, keys in zip(plan.views, per_view, strict=True):
            stored = self._online.read_now(read.view.name, keys)
            if stored is None:
                return None
            found.append(pit.online_cells(stored, now, read.decoder, read.ttl_us))
        return self._online_result(plan, inputs, found)

    def _online_plan(
        self, query: OnlineQuery
    ) -> tuple[ReadPlan, list[list[str]], list[dict[str, Cell]]]:
        """The read plan of an online query, each view's entity keys and the request-input
        cells (none, one entry for every row, or one per row), all checked: one
        InvalidInput names every defective key and input."""
        count = len(query.entity_keys)
        if count > MAX_ENTITY_KEYS:
            raise InvalidInput.field(
                "entity_keys", f"{count} entity keys; at most {MAX_ENTITY_KEYS} per call"
            )
        if count == 0:
            raise InvalidInput.field("entity_keys", "name at least one entity")
        plan = self.compile(query.feature_refs, query.feature_service)
        if len(query.request_inputs) not in (0, 1, count):
            raise InvalidInput.field(
                "request_inputs", f"give one entry per entity key ({count}) or a single one"
            )
        violations: list[FieldViolation] = []
        per_view = self._entity_strings(plan, query.entity_keys, "entity_keys", violations)
        compiled = plan.compiled
        supplied = query.request_inputs or [{}]
        inputs = [
            self._request_inputs(compiled, values, f"request_inputs[{i}]", violations)
            for i, values in enumerate(supplied)
        ] if compiled.request_inputs else []  # fmt: skip
        validation.raise_invalid(violations)
        for read in plan.views:
            if not read.view.online:
                raise FailedPrecondition(f"feature view {read.view.name!r} is not kept online")
        return plan, per_view, inputs

    def _online_result(
        self,
        plan: ReadPlan,
        inputs: Sequence[dict[str, Cell]],
        found: Sequence[Sequence[Sequence[Cell]]],
    ) -> ReadResult:
        """Rows in request order from each view's cells per request row, and the
        request-input cells (one entry for every row, or one per row)."""
        compiled = plan.compiled
        service = compiled.service.ref if compiled.service else ""
        if plan.direct:
            return ReadResult(compiled.schema, list(found[0]), service)  # cells as they are
        rows: list[dict[str, Cell]] = [{} for _ in found[0]]
        for read, cells in zip(plan.views, found, strict=True):
            names = read.refs
            for row, row_cells in zip(rows, cells, strict=True):
                row.update(zip(names, row_cells, strict=True))
        if inputs:
            shared = len(inputs) == 1
            for i, row in enumerate(rows):
                row.update(inputs[0] if shared else inputs[i])
        return ReadResult(compiled.schema, [compiled.evaluate(row) for row in rows], service)

    async def read_historical(
        self, query: HistoricalQuery, *, stored: bool = False
    ) -> AsyncIterator[HistoricalChunk]:
        """Point-in-time correct rows, every request row in order, in chunks.

        ``stored``: where the read is direct (one view's features as stored), chunks
        carry the join's stored rows undecoded (``HistoricalChunk.stored``), for a
        reader that decodes columns at once."""
        count = len(query.rows)
        if count > MAX_HISTORICAL_ROWS:
            raise InvalidInput.field(
                query.field, f"{count} rows; at most {MAX_HISTORICAL_ROWS} per call"
            )
        if count == 0:
            raise InvalidInput.field(query.field, "name at least one entity row")
        plan = await self.fresh(lambda: self.compile(query.feature_refs, query.feature_service))
        compiled = plan.compiled
        # Everything is checked before the first chunk goes out: a stream never fails
        # halfway, and one InvalidInput names every defective key, time and input.
        violations: list[FieldViolation] = []
        field = query.field
        # An EntityRow holds its key in entity_key; an Arrow table's row is the key itself.
        member = ".entity_key" if field == "entity_rows" else ""
        keys = [r.entity_key for r in query.rows]
        per_view = self._entity_strings(plan, keys, field, violations, member)
        times: list[int] = []
        for i, entity_row in enumerate(query.rows):
            problem = validation.check_time(entity_row.event_us)
            if problem:
                violations.append(FieldViolation(f"{field}[{i}].event_time", problem))
            times.append(entity_row.event_us or 0)
        inputs = [
            self._request_inputs(compiled, r.request_inputs, f"{field}[{i}].request_inputs",
                                 violations)
            for i, r in enumerate(query.rows)
        ] if compiled.request_inputs else None  # fmt: skip
        validation.raise_invalid(violations)
        size = query.chunk_size if query.chunk_size > 0 else DEFAULT_CHUNK_ROWS
        size = min(size, MAX_CHUNK_ROWS)
        service = compiled.service.ref if compiled.service else ""
        # Stored rows are read and decoded in runs of several messages (a multiple of
        # the message size); everything else a message at a time.
        as_stored = stored and plan.direct
        step = max(size, _STORED_RUN_ROWS // size * size) if as_stored else size
        for start in range(0, count, step):
            end = min(start + step, count)
            as_of = times[start:end]
            rows: list[Sequence[Cell]] = []
            stored_rows: StoredRows | None = None
            if as_stored:
                direct = plan.views[0]
                joined = await self._offline.as_of_lines(
                    direct.view.name, list(zip(per_view[0][start:end], as_of, strict=True))
                )
                stored_rows = StoredRows(joined, as_of, direct.decoder, direct.ttl_us, size)
            else:
                found = [
                    await self._as_of(read, keys[start:end], as_of)
                    for read, keys in zip(plan.views, per_view, strict=True)
                ]
                chunk_inputs = inputs[start:end] if inputs else None
                rows = self._chunk_rows(plan, found, as_of, chunk_inputs)
            yield HistoricalChunk(
                compiled.schema if start == 0 else (),
                start,
                rows,
                service if start == 0 else "",
                stored_rows,
            )

    @staticmethod
    def _chunk_rows(
        plan: ReadPlan,
        found: Sequence[Found],
        as_of: Sequence[int],
        inputs: Sequence[dict[str, Cell]] | None,
    ) -> list[Sequence[Cell]]:
        """One chunk's rows from its as-of joins (one per view of the plan)."""
        if plan.direct:
            read = plan.views[0]
            return pit.as_of_cells(found[0], as_of, read.decoder, read.ttl_us)
        cells: list[dict[str, Cell]] = (
            [dict(row_inputs) for row_inputs in inputs] if inputs else [{} for _ in as_of]
        )
        for read, hits in zip(plan.views, found, strict=True):
            view_rows = pit.as_of_cells(hits, as_of, read.decoder, read.ttl_us)
            names = read.refs
            for row, view_cells in zip(cells, view_rows, strict=True):
                row.update(zip(names, view_cells, strict=True))
        return [plan.compiled.evaluate(row) for row in cells]

    async def _as_of(self, read: ViewRead, keys: Sequence[str], times: Sequence[int]) -> Found:
        return await self._offline.as_of(read.view.name, list(zip(keys, times, strict=True)))

    # --- materialization, statistics, maintenance ---------------------------------------

    async def materialize(
        self, views: Sequence[str], start_us: int | None, end_us: int | None
    ) -> AsyncIterator[MaterializeProgress]:
        """Copy the newest offline row per entity in [start, end) into the online store."""
        _check_window(start_us, end_us)
        if views:
            targets = await self.fresh(
                lambda: [self.feature_view(v, f"feature_views[{i}]") for i, v in enumerate(views)]
            )
        else:
            targets = [v for _, v in sorted(self._defs.views.items()) if v.online]
        for i, view in enumerate(targets):
            if not view.online:
                raise FailedPrecondition(f"feature_views[{i}]: view {view.name!r} is not online")
        end = end_us if end_us is not None else self._clock() + 1
        for view in targets:
            marker = f"materialized:{view.name}"
            start = start_us if start_us is not None else (await self._offline.get_marker(marker))
            start = MIN_TIME_US if start is None else start
            total = await self._offline.count_entities(view.name, start, end)
            done, after = 0, ""
            while records := await self._offline.latest_in_range(
                view.name, start, end, after, _MATERIALIZE_SLICE
            ):
                async with self._write_lock:
                    # Sequence 0 leaves the watermark alone: this is not a commit-log replay.
                    await self._online.apply(view.name, records, 0)
                done += len(records)
                after = records[-1].entity
                yield MaterializeProgress(view.name, done, total, False, end)
            await self._offline.set_marker(marker, end)
            yield MaterializeProgress(view.name, done, total, True, end)

    async def statistics(
        self,
        view_name: str,
        features: Sequence[str],
        start_us: int | None,
        end_us: int | None,
        bins: int,
        quantiles: Sequence[float],
    ) -> ViewStatistics:
        view = await self.fresh(lambda: self.feature_view(view_name, "feature_view"))
        chosen = []
        for i, name in enumerate(features):
            feature = view.feature(name)
            if feature is None:
                raise InvalidInput.field(f"features[{i}]", f"view has no feature {name!r}")
            chosen.append(feature)
        chosen = chosen or list(view.features)
        if not 0 <= bins <= 1000:
            raise InvalidInput.field("histogram_bins", "must be between 0 and 1000")
        for i, q in enumerate(quantiles):
            if not 0 <= q <= 1:
                raise InvalidInput.field(f"quantiles[{i}]", "must be within [0, 1]")
        bins = bins or 10
        quantiles = list(quantiles) or [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]
        _check_window(start_us, end_us)
        start = MIN_TIME_US if start_us is None else start_us
        end = self._clock() + 1 if end_us is None else end_us
        summaries = []
        for feature in chosen:
            numeric = feature.dtype in (DType.INT64, DType.DOUBLE)
            summary = await self._offline.feature_summary(
                view.name, feature.name, numeric, start, end, quantiles, bins
            )
            summaries.append(FeatureSummary(feature.name, feature.dtype, summary))
        rows = summaries[0].summary.total if summaries else 0
        return ViewStatistics(summaries, rows, start, end, self._clock())

    async def maintain(self, slice_rows: int = 1_000) -> int:
        """One pass of cleanup in bounded slices: expired online values, offline retention."""
        removed = 0
        now = self._clock()
        for view in list(self._defs.views.values()):
            if view.online and view.ttl_us:
                removed += await self._online.delete_expired(
                    view.name, now - view.ttl_us, slice_rows
                )
            retention = int(view.offline_retention.total_seconds() * 1_000_000)
            if retention:
                removed += await self._offline.purge_before(view.name, now - retention, slice_rows)
            await asyncio.sleep(0)
        return removed


def _violations_of(exc: InvalidInput) -> tuple[RowViolation, ...]:
    if isinstance(exc, validation.BatchRejected):
        return exc.row_violations
    return tuple(RowViolation(-1, "", v.description, v.field) for v in exc.violations)


def _page(
    items: list[T], key: Callable[[T], str], page_size: int, token: str
) -> tuple[list[T], str]:
    if page_size < 0:
        raise InvalidInput.field("page_size", "must not be negative")
    size = min(page_size or _DEFAULT_PAGE, _MAX_PAGE)
    after = ""
    if token:
        try:
            after = base64.urlsafe_b64decode(token.encode()).decode()
        except (ValueError, UnicodeDecodeError):
            raise InvalidInput.field("page_token", "not a token this server issued") from None
    remaining = [item for item in items if key(item) > after]
    page = remaining[:size]
    next_token = (
        base64.urlsafe_b64encode(key(page[-1]).encode()).decode() if len(remaining) > size else ""
    )
    return page, next_token


def _check_window(start_us: int | None, end_us: int | None) -> None:
    """A request's time window, each end where event times may lie (any Timestamp
    travels on the wire, up to the year 9999)."""
    violations = [
        FieldViolation(field, "must be between 1900-01-01 and 2200-01-01 UTC")
        for field, us in (("start_time", start_us), ("end_time", end_us))
        if us is not None and not MIN_TIME_US <= us <= MAX_TIME_US
    ]
    if violations:
        raise InvalidInput(f"{violations[0].field}: {violations[0].description}", violations)
