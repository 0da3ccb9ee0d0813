"""The feature store's service for a thread-pool ``grpc.server`` (the default front).

GetOnlineFeatures runs on a small pool of its own (``ONLINE_READ_THREADS``): the
request is converted, checked and answered on the gRPC thread that took it whenever
the online store can answer without the event loop (SQLite; Redis values in the
read cache), and awaited on the loop otherwise (a Redis round trip, a large read, a
definitions reload). StreamOnlineFeatures answers each message of its stream with the
same function, on the front thread the stream holds (``mlbackend_runtime.streamed``).
Every other method is the asyncio servicer's own, run on the loop
(``mlbackend_runtime.threaded``).

The usual request (entities of one join key, no request inputs) arrives as bytes and
is parsed in C (``mlbackend_features/_wire.c``) into a column of key values, read by
``FeatureStore.read_column_now``; anything else, or a column that does not fit the read
plan, is parsed by protobuf and takes the general path, which reports what is wrong.
Measured here (100 entities x 10 features at concurrency 8, bench/features' data and
load generator, 4 s runs): 2,282-2,375 rps and ~440 µs of server CPU per request before,
5,237-5,315 rps and ~205 µs with it, as fast as the bare sync echo server; in-process,
145 µs per read before, 51 µs after (protobuf's map access was 63 µs of it).

The pool receives a queued call's request as the call arrives
(``mlbackend_runtime.eager.EagerRequestPool``), not once a thread takes it. Measured
(bench/features ``--only ours --seconds 2``, c=8, two alternated rounds against the
stock pool): 1 entity x 10 features 3,938 / 3,570 rps against 3,559 / 2,756 (SQLite),
3,724 / 3,961 against 3,387 / 2,992 (Redis); 100 entities within the noise
(1,736-2,102 against 1,402-2,203).

Why a small pool: measured here (1 entity x 10 features at concurrency 8, server
CPU per request, same load generator, interleaved rounds), grpc.aio 238-256 µs; this
front with 1 online thread 212; with 2 or 3, 175-190; with 4, 187; with 8, 242: more
threads than cores only hand the GIL back and forth, while two take queued calls one
after another without sleeping. Two rather than three: p99 2.86-3.31 against
3.06-3.69 ms in three same-run comparisons, throughput within 3 %.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

import grpc

from mlbackend.features.v1 import features_pb2 as pb
from mlbackend_features.core.model import ColumnQuery
from mlbackend_features.core.service import FeatureStore
from mlbackend_features.transport import convert
from mlbackend_features.transport.servicer import FeatureStoreServicer
from mlbackend_runtime.streamed import StreamContext, StreamSlots, answer_each
from mlbackend_runtime.threaded import parsed, run_on, service_handlers

ONLINE_READ_THREADS = 2

logger = logging.getLogger("mlbackend.features")

_wire: ModuleType | None
try:
    from mlbackend_features import _wire
except ImportError:  # built without a C compiler (see setup.py)
    _wire = None
NATIVE = _wire is not None


def handlers(
    store: FeatureStore,
    loop: asyncio.AbstractEventLoop,
    online: ThreadPoolExecutor,
    readers: ThreadPoolExecutor,
    streams: StreamSlots,
) -> list[grpc.GenericRpcHandler]:
    """``online`` runs online reads; ``readers`` take pushed batches off the stream;
    ``streams`` holds the open StreamOnlineFeatures calls (drained when the server
    stops)."""
    parse_online_request = None if _wire is None else _wire.parse_online_request
    if parse_online_request is None:
        logger.warning(
            "mlbackend_features._wire is not built: every online read is parsed by "
            "protobuf (slower with many entity keys; install a C compiler, reinstall)"
        )

    def read_online(data: bytes, context: grpc.ServicerContext) -> bytes:
        usual = parse_online_request(data) if parse_online_request is not None else None
        if usual is not None:
            column = ColumnQuery(*usual)
            result = store.read_column_now(column)
            if result is not None:
                return convert.online_result_wire(result)  # sent as they are
            query = column.as_online_query()  # what protobuf would give, without parsing
        else:
            query = convert.online_query(parsed(pb.GetOnlineFeaturesRequest, data))
        result = store.read_online_now(query)
        if result is None:
            result = run_on(loop, store.read_online(query), context)
        return convert.online_result_wire(result)

    read_online.experimental_thread_pool = online  # type: ignore[attr-defined]

    def stream_online(messages: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        # On a front thread, which the stream holds while it is open (not ``online``'s
        # two, which unary reads share).
        each = StreamContext(context)
        return answer_each(
            messages,
            context,
            lambda data: read_online(data, each),  # type: ignore[arg-type]
            streams,
            "GetOnlineFeatures",
        )

    return [
        service_handlers(
            pb,
            "FeatureStoreService",
            FeatureStoreServicer(store),
            loop,
            {"GetOnlineFeatures": read_online, "StreamOnlineFeatures": stream_online},
            readers,
            raw={"GetOnlineFeatures", "StreamOnlineFeatures"},
        )
    ]
