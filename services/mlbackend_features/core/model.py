"""Domain types of the feature store: definitions, values, rows and read results.

Definitions are frozen pydantic models, so the definitions store can keep them as
JSON without a codec of its own. Values on the hot paths are plain Python scalars
(``int``, ``float``, ``str``, ``bool``, aware ``datetime`` or ``None``) and times are
integer microseconds since the Unix epoch (UTC), cheap to compare and to store.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Literal, NamedTuple, overload

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from mlbackend_features.core.codec import RowDecoder

Scalar = int | float | str | bool | datetime | None
"""One feature value; the feature's dtype says which member is meant."""

NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MICROS = 1_000_000

# Sane limits: below the transport's message size, bad input still gets a field error.
MAX_ENTITY_KEYS = 10_000
MAX_HISTORICAL_ROWS = 1_000_000
MAX_STRING_BYTES = 64 * 1024
MAX_KEY_STRING_BYTES = 1024
MIN_TIME_US = int(datetime(1900, 1, 1, tzinfo=UTC).timestamp()) * MICROS
MAX_TIME_US = int(datetime(2200, 1, 1, tzinfo=UTC).timestamp()) * MICROS
DEFAULT_CHUNK_ROWS = 1_000
MAX_CHUNK_ROWS = 10_000


class DType(enum.StrEnum):
    UNSPECIFIED = "UNSPECIFIED"
    """Not given: refused wherever a definition needs a type."""
    INT64 = "INT64"
    DOUBLE = "DOUBLE"
    STRING = "STRING"
    BOOL = "BOOL"
    TIMESTAMP = "TIMESTAMP"


NUMERIC = frozenset({DType.INT64, DType.DOUBLE, DType.BOOL})
CATEGORICAL = frozenset({DType.STRING, DType.INT64, DType.BOOL})
KEY_DTYPES = frozenset({DType.INT64, DType.STRING})


class NanPolicy(enum.StrEnum):
    REJECT = "REJECT"
    AS_NULL = "AS_NULL"
    ALLOW = "ALLOW"


class Status(enum.StrEnum):
    """Why a value read from the store is what it is."""

    PRESENT = "PRESENT"
    NOT_FOUND = "NOT_FOUND"
    EXPIRED = "EXPIRED"
    NULL_VALUE = "NULL_VALUE"
    REQUEST_INPUT = "REQUEST_INPUT"
    COMPUTED = "COMPUTED"


class _Definition(BaseModel):
    # Stored as JSON: NaN and ±inf (a ratio's default, a constraint's bound) are written
    # as the constants Python's and pydantic's readers take back, not as null, which
    # the stored definition would then fail to load as.
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")


class Constraints(_Definition):
    not_null: bool = False
    min: float | None = None
    max: float | None = None
    allowed_values: tuple[Scalar, ...] = ()
    max_length: int = 0
    nan_policy: NanPolicy = NanPolicy.REJECT


class Feature(_Definition):
    name: str
    dtype: DType
    description: str = ""
    constraints: Constraints = Constraints()
    tags: dict[str, str] = Field(default_factory=dict)


class JoinKey(_Definition):
    name: str
    dtype: DType


class Entity(_Definition):
    name: str
    join_keys: tuple[JoinKey, ...]
    description: str = ""
    owner: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    revision: int = 0
    create_time: datetime | None = None
    update_time: datetime | None = None


class FeatureView(_Definition):
    name: str
    entities: tuple[str, ...]
    features: tuple[Feature, ...]
    ttl: timedelta = timedelta(0)
    """How long a value stays valid after its event time; zero means forever."""
    online: bool = True
    offline_retention: timedelta = timedelta(0)
    description: str = ""
    owner: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    revision: int = 0
    create_time: datetime | None = None
    update_time: datetime | None = None

    def feature(self, name: str) -> Feature | None:
        return next((f for f in self.features if f.name == name), None)

    @property
    def ttl_us(self) -> int:
        """TTL in microseconds; 0 = forever."""
        return int(self.ttl.total_seconds() * MICROS)


class RequestInput(_Definition):
    name: str
    dtype: DType
    nullable: bool = False
    constraints: Constraints = Constraints()
    """Checked on every supplied value, as a stored feature's on every write."""


class StandardScale(_Definition):
    kind: Literal["standard_scale"] = "standard_scale"
    output: str
    input: str
    mean: float
    std: float


class MinMaxScale(_Definition):
    kind: Literal["min_max_scale"] = "min_max_scale"
    output: str
    input: str
    min: float
    max: float


class Log1p(_Definition):
    kind: Literal["log1p"] = "log1p"
    output: str
    input: str


class Clip(_Definition):
    kind: Literal["clip"] = "clip"
    output: str
    input: str
    min: float | None = None
    max: float | None = None


class Bucketize(_Definition):
    kind: Literal["bucketize"] = "bucketize"
    output: str
    input: str
    boundaries: tuple[float, ...]


class OneHot(_Definition):
    kind: Literal["one_hot"] = "one_hot"
    output: str
    input: str
    categories: tuple[str, ...]
    include_other: bool = False


class HashBucket(_Definition):
    kind: Literal["hash_bucket"] = "hash_bucket"
    output: str
    input: str
    num_buckets: int
    salt: str = ""


class Product(_Definition):
    kind: Literal["product"] = "product"
    output: str
    left: str
    right: str


class Ratio(_Definition):
    kind: Literal["ratio"] = "ratio"
    output: str
    numerator: str
    denominator: str
    default_value: float = 0.0


class HourOfDay(_Definition):
    kind: Literal["hour_of_day"] = "hour_of_day"
    output: str
    input: str
    time_zone: str = ""


class DayOfWeek(_Definition):
    kind: Literal["day_of_week"] = "day_of_week"
    output: str
    input: str
    time_zone: str = ""


class Difference(_Definition):
    """left - right: two numeric inputs, or two timestamps (seconds between them)."""

    kind: Literal["difference"] = "difference"
    output: str
    left: str
    right: str


class EpochSeconds(_Definition):
    """Unix seconds of a timestamp, with microsecond precision."""

    kind: Literal["epoch_seconds"] = "epoch_seconds"
    output: str
    input: str


Transform = Annotated[
    StandardScale
    | MinMaxScale
    | Log1p
    | Clip
    | Bucketize
    | OneHot
    | HashBucket
    | Product
    | Ratio
    | HourOfDay
    | DayOfWeek
    | Difference
    | EpochSeconds,
    Field(discriminator="kind"),
]


class OutputColumn(_Definition):
    """One column a read returns: its name, dtype and whether it may be null."""

    name: str
    dtype: DType
    nullable: bool = True
    description: str = ""


class FeatureService(_Definition):
    name: str
    feature_refs: tuple[str, ...]
    request_inputs: tuple[RequestInput, ...] = ()
    transforms: tuple[Transform, ...] = ()
    outputs: tuple[str, ...] = ()
    description: str = ""
    owner: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    version: int = 0
    output_schema: tuple[OutputColumn, ...] = ()
    create_time: datetime | None = None
    created_by: str = ""

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def same_content(self, other: FeatureService) -> bool:
        """True when only output-only fields (version, times, schema) differ."""
        skip = {"version", "output_schema", "create_time", "created_by"}
        return self.model_dump(exclude=skip) == other.model_dump(exclude=skip)


class DefinitionSet(BaseModel):
    """What one ApplyDefinitions call carries."""

    entities: tuple[Entity, ...] = ()
    feature_views: tuple[FeatureView, ...] = ()
    feature_services: tuple[FeatureService, ...] = ()


class ChangeType(enum.StrEnum):
    CREATED = "CREATED"
    UPDATED = "UPDATED"
    FORCED = "FORCED"
    UNCHANGED = "UNCHANGED"


class DefinitionChange(NamedTuple):
    kind: Literal["entity", "feature_view", "feature_service"]
    name: str
    change_type: ChangeType
    revision: int
    detail: str


class Actor(NamedTuple):
    """Who asks, as far as the core needs to know."""

    identity: str
    is_admin: bool


# --- writes -----------------------------------------------------------------------------

EntityKey = dict[str, Scalar]
"""Join key name → value, e.g. {"user_id": "u1"}."""


class WriteRow(NamedTuple):
    entity_key: EntityKey
    event_us: int | None
    values: list[Scalar]


class WriteBatch(NamedTuple):
    batch_id: str
    feature_view: str
    features: list[str]
    rows: list[WriteRow]


class RowViolation(NamedTuple):
    """One reason a batch was refused; ``row_index`` is -1 for the batch as a whole."""

    row_index: int
    feature: str
    description: str
    field: str
    """Path of the offending field in the write request, e.g. ``batch.rows[3].values.amount``."""


class WriteAck(NamedTuple):
    batch_id: str
    row_count: int
    sequence: int


class PushAck(NamedTuple):
    """The acknowledgement of one pushed batch; ``error`` is set when it was rejected."""

    batch_id: str
    ack: WriteAck | None
    error: Exception | None
    violations: tuple[RowViolation, ...]


# --- storage records --------------------------------------------------------------------


class Record(NamedTuple):
    """One stored row of a view: encoded entity key, event time, encoded values."""

    entity: str
    event_us: int
    payload: str


class CommittedBatch(NamedTuple):
    sequence: int
    batch_id: str
    feature_view: str
    records: list[Record]


class Commit(NamedTuple):
    sequence: int
    row_count: int
    duplicate: bool


# --- reads ------------------------------------------------------------------------------


class Cell(NamedTuple):
    value: Scalar
    status: Status
    event_us: int | None


class PresentRow(Sequence[Cell]):
    """The cells of one stored row within its TTL, kept as the row's values: a value is
    PRESENT, or NULL_VALUE where it is None, and every cell has the row's event time.

    Reads return one of these per found row instead of one ``Cell`` per value; the
    transport encodes it from ``values`` directly (a historical retrieval has ~100,000
    cells). Read-only, like every row a read returns.
    """

    __slots__ = ("event_us", "values", "wire")

    def __init__(self, values: list[Scalar], event_us: int) -> None:
        self.values = values
        self.event_us = event_us
        # Its cells as a length-delimited protobuf field's body (length, then the bytes),
        # kept by the transport once encoded: an online read of a hot entity gets the
        # same row again (``RowDecoder.present_recent``).
        self.wire: bytes | None = None

    def _cell(self, value: Scalar) -> Cell:
        status = Status.NULL_VALUE if value is None else Status.PRESENT
        return Cell(value, status, self.event_us)

    @overload
    def __getitem__(self, index: int) -> Cell: ...
    @overload
    def __getitem__(self, index: slice) -> list[Cell]: ...
    def __getitem__(self, index: int | slice) -> Cell | list[Cell]:
        if isinstance(index, slice):
            return [self._cell(v) for v in self.values[index]]
        return self._cell(self.values[index])

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self) -> Iterator[Cell]:
        return map(self._cell, self.values)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return len(other) == len(self.values) and all(
            a == b for a, b in zip(self, other, strict=True)
        )

    __hash__ = None  # type: ignore[assignment]  # compares equal to lists

    def __repr__(self) -> str:
        return f"PresentRow({self.values!r}, {self.event_us!r})"


class OnlineQuery(NamedTuple):
    feature_refs: list[str]
    feature_service: str
    entity_keys: list[EntityKey]
    request_inputs: list[dict[str, Scalar]]


class ColumnQuery(NamedTuple):
    """The usual online read: entities of one join key, given as a column of values (all
    ints or all strings), no request inputs. What an :class:`OnlineQuery` of such keys
    means, without a dict per entity (see ``FeatureStore.read_column_now``)."""

    feature_refs: list[str]
    feature_service: str
    join_key: str
    values: list[int] | list[str]

    def as_online_query(self) -> OnlineQuery:
        name = self.join_key
        keys: list[EntityKey] = [{name: value} for value in self.values]
        return OnlineQuery(self.feature_refs, self.feature_service, keys, [])


class ReadResult(NamedTuple):
    schema: tuple[OutputColumn, ...]
    rows: list[Sequence[Cell]]
    """Read-only: rows of one entity asked for twice may be the same list."""
    feature_service: str


class HistoricalRow(NamedTuple):
    entity_key: EntityKey
    event_us: int | None
    request_inputs: dict[str, Scalar]


class HistoricalQuery(NamedTuple):
    feature_refs: list[str]
    feature_service: str
    rows: list[HistoricalRow]
    chunk_size: int
    field: str = "entity_rows"
    """The request field the rows came from, as errors name it."""


class JoinedRows(NamedTuple):
    """What an as-of join found, for a reader that parses the payloads as JSON lines:
    per query row the stored row's event time (None: nothing found) and its payload, one
    per line (``{}`` where nothing was found)."""

    event_us: Sequence[int | None]
    lines: bytes
    found: Sequence[tuple[int, str] | None] | None = None
    """The rows one by one, when the store had them so; otherwise ``rows`` splits
    ``lines`` (a store sends lines alone only when no payload holds a line break)."""

    @classmethod
    def of(cls, found: Sequence[tuple[int, str] | None]) -> JoinedRows:
        return cls(
            [None if hit is None else hit[0] for hit in found],
            "\n".join(["{}" if hit is None else hit[1] for hit in found]).encode(),
            found,
        )

    def rows(self) -> Sequence[tuple[int, str] | None]:
        """Per query row ``(event_us, payload)`` or None, as ``OfflineStore.as_of``."""
        if self.found is not None:
            return self.found
        if not self.event_us:
            return []
        payloads = self.lines.decode().split("\n")
        return [
            None if ts is None else (ts, payload)
            for ts, payload in zip(self.event_us, payloads, strict=True)
        ]


class StoredRows(NamedTuple):
    """What the as-of join found for a chunk of a direct read, not decoded yet: per
    entity row the stored row (``joined``) and its as-of time. A reader that wants
    columns decodes them in one pass (``transport/arrow.py``); ``pit.cells_of`` gives the
    same rows as cells. Such a chunk holds several response messages' rows
    (``message_rows`` each), as decoding in larger runs costs less per row."""

    joined: JoinedRows
    as_of: Sequence[int]
    decoder: RowDecoder
    ttl_us: int
    message_rows: int
    """Rows per response message: a chunk of stored rows may span several."""


class HistoricalChunk(NamedTuple):
    schema: tuple[OutputColumn, ...]
    start_row_index: int
    rows: list[Sequence[Cell]]
    feature_service: str
    # Set instead of ``rows`` when the reader asked for stored rows (direct reads only).
    stored: StoredRows | None = None


class MaterializeProgress(NamedTuple):
    feature_view: str
    rows_done: int
    rows_total: int
    done: bool
    materialized_until_us: int


def now_us() -> int:
    return int(datetime.now(UTC).timestamp() * MICROS)


def us_to_datetime(us: int) -> datetime:
    return datetime.fromtimestamp(0, UTC) + timedelta(microseconds=us)


def datetime_to_us(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - datetime.fromtimestamp(0, UTC)
    return (delta.days * 86_400 + delta.seconds) * MICROS + delta.microseconds
