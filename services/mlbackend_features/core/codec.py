"""How entity keys and feature values become the strings every store keeps.

One encoding for every engine, so the offline commit log can be replayed into any
online store byte for byte and both backends answer identically.
- An entity key is the JSON array of its join-key values in the view's join-key order.
- A row's values are a JSON object ``{feature: value}``; timestamps are integer
  microseconds and non-finite doubles the strings ``"nan"``, ``"inf"``, ``"-inf"`` (strict
  JSON, so SQL engines' JSON functions can read every row).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime

import orjson

from mlbackend_features.core.model import (
    DType,
    FeatureView,
    JoinKey,
    PresentRow,
    Scalar,
    datetime_to_us,
    us_to_datetime,
)

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _loads(payload: str) -> dict[str, object]:
    # orjson decodes a stored row about 6x faster than json; anything it refuses (an
    # integer past 64 bits in a hand-made row, say) goes through json as before.
    try:
        out: dict[str, object] = orjson.loads(payload)
    except orjson.JSONDecodeError:
        out = json.loads(payload)
    return out


def encode_key(values: Sequence[Scalar]) -> str:
    return _dumps(list(values))


def encode_int_key(value: int) -> str:
    """``encode_key([value])`` for one int64 join key, without the JSON encoder."""
    return f"[{value}]"


def encode_values(values: Mapping[str, Scalar]) -> str:
    return _dumps({k: _plain(v) for k, v in values.items()})


def _plain(value: Scalar) -> Scalar:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, datetime):
        return datetime_to_us(value)
    return value


def decode_values(view: FeatureView, payload: str) -> dict[str, Scalar]:
    """The stored values of one row, typed by the view's current definition."""
    return decode_fields(payload, [(f.name, f.dtype) for f in view.features])


def decode_fields(payload: str, fields: Sequence[tuple[str, DType]]) -> dict[str, Scalar]:
    """Only the named fields of one stored row, typed."""
    raw = _loads(payload)
    out: dict[str, Scalar] = {}
    for name, dtype in fields:
        value = raw.get(name)
        if value is None:
            out[name] = None
        elif type(value) is _NATIVE.get(dtype):
            out[name] = value  # type: ignore[assignment]  # checked just above
        else:
            out[name] = _typed(dtype, value)
    return out


class RowDecoder:
    """Decodes the requested fields of stored rows into read results, typed; built once
    per read plan, so the per-row work is only what differs between rows."""

    __slots__ = ("_recent", "fields", "names", "natives")

    def __init__(
        self, fields: Sequence[tuple[str, DType]], recent: RecentRows | None = None
    ) -> None:
        """``recent``: where :meth:`present_recent` keeps rows, shared by the decoders of
        one store so that one bound holds for all of them."""
        self.fields = tuple(fields)
        self.names = tuple(name for name, _ in fields)
        # What JSON yields for each field when the stored value is of its dtype.
        self.natives = [_NATIVE.get(dtype) for _, dtype in fields]
        self._recent: RecentRows = {} if recent is None else recent

    def present_recent(self, payload: str, event_us: int) -> PresentRow:
        """:meth:`present`, the same row again for a stored row decoded lately: online
        reads of hot entities skip decoding (and, through ``PresentRow.wire``, encoding).
        Rows are read-only, so sharing them is safe."""
        key = (self, payload, event_us)
        recent = self._recent
        row = recent.get(key)
        if row is None:
            row = recent[key] = self.present(payload, event_us)
            if len(recent) > RECENT_ROWS:
                # Reads on several threads may evict at once: the bound is approximate,
                # and losing a race only leaves one more row or one less.
                with contextlib.suppress(KeyError, RuntimeError, StopIteration):
                    del recent[next(iter(recent))]
        return row

    def present(self, payload: str, event_us: int) -> PresentRow:
        """The cells of one stored row within its TTL: PRESENT, or NULL_VALUE where the
        value is null (or of another type, see :func:`_typed`); the read path's decoder."""
        raw = _loads(payload)
        values: list[Scalar] = list(map(raw.get, self.names))  # type: ignore[arg-type]
        if list(map(type, values)) != self.natives:  # one C-level check in the usual case
            for i, (_, dtype) in enumerate(self.fields):
                value = values[i]
                if value is not None and type(value) is not self.natives[i]:
                    values[i] = _typed(dtype, value)
        return PresentRow(values, event_us)


RecentRows = dict[tuple["RowDecoder", str, int], PresentRow]

# Decoded rows the read plans of a store keep for online reads, all plans together (the
# oldest decoded go first): about 0.8 KB each for 10 features beside the stored payload,
# which the online read cache holds anyway, so ~26 MB at most. Measured in-process, 100
# keys x 10 features read at random among 10,000 entities: 717 µs per read with 4,096
# rows kept, 290 µs once every entity's row fits.
RECENT_ROWS = 32_768

# JSON already yields these types for these dtypes; everything else goes through _typed.
_NATIVE: dict[DType, type] = {
    DType.DOUBLE: float,
    DType.INT64: int,
    DType.STRING: str,
    DType.BOOL: bool,
}


def _typed(dtype: DType, value: object) -> Scalar:
    # A forced dtype change can leave old values of another type behind: they read as
    # null rather than as a value of the wrong type.
    if dtype is DType.DOUBLE:
        if isinstance(value, str) and value in ("nan", "inf", "-inf"):
            return float(value)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if ok else None  # type: ignore[arg-type]
    if dtype is DType.INT64:
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if dtype is DType.STRING:
        return value if isinstance(value, str) else None
    if dtype is DType.BOOL:
        return value if isinstance(value, bool) else None
    if isinstance(value, int) and not isinstance(value, bool):
        return us_to_datetime(value)
    return None


def key_names(join_keys: Sequence[JoinKey]) -> tuple[str, ...]:
    return tuple(k.name for k in join_keys)
