"""The registry follower against a scripted source: policy, alias moves that wait for a
loadable version, the cache index. (Over a real registry: tests/integration.)"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest
import skops.io as sio
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

from mlbackend_serving.core.cache import ArtifactCache
from mlbackend_serving.core.follower import Backoff, RegistryFollower
from mlbackend_serving.core.model import DType, FeatureSpec, ModelKey, OutputKind, OutputSpec
from mlbackend_serving.core.service import ServingCore
from mlbackend_serving.core.versions import (
    AliasSet,
    Change,
    RegistryState,
    SnapshotComplete,
    SourceUnavailable,
    VersionInfo,
    VersionPolicy,
    VersionUpserted,
)

X, Y = make_classification(n_samples=100, n_features=3, n_informative=2, n_redundant=0,
                           random_state=0)  # fmt: skip
GOOD = sio.dumps(LogisticRegression().fit(X, Y))
BROKEN = b"PK\x03\x04 not a skops file"


def _info(version: int, data: bytes) -> VersionInfo:
    return VersionInfo(
        "m",
        version,
        hashlib.sha256(data).hexdigest(),
        "skops",
        tuple(FeatureSpec(f"f{i}", DType.DOUBLE) for i in range(3)),
        OutputSpec(OutputKind.CLASSIFIER),
        input_example=(tuple(float(v) for v in X[0]),),
    )


class ScriptedSource:
    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs = blobs
        self.live: asyncio.Queue[Change] = asyncio.Queue()
        self.snapshot: list[Change] = []
        self.down = False

    async def watch(self, start_revision: int) -> AsyncIterator[Change]:
        if self.down:
            raise SourceUnavailable("down")
        if start_revision == 0:
            for change in self.snapshot:
                yield change
            yield SnapshotComplete(len(self.snapshot))
        while True:
            yield await self.live.get()

    async def download(self, info: VersionInfo, out: BinaryIO) -> None:
        if self.down:
            raise SourceUnavailable("down")
        out.write(self.blobs[info.sha256])


def test_policy_parses_and_selects() -> None:
    policy = VersionPolicy.parse("fraud@production, other@latest:2,x@3")
    assert [(r.model, r.alias, r.latest, r.version) for r in policy.rules] == [
        ("fraud", "production", 0, None),
        ("other", None, 2, None),
        ("x", None, 0, 3),
    ]
    for bad in ("fraud@", "fraud@latest:0", "@prod", "fraud@0", "a/b"):
        with pytest.raises(ValueError):
            VersionPolicy.parse(bad)
    state = RegistryState()
    for name, version in [("fraud", 1), ("fraud", 2), ("other", 1), ("other", 2), ("other", 3)]:
        state.versions[ModelKey(name, version)] = _info(version, GOOD)
    state.aliases = {"fraud": {"production": 1, "challenger": 2}, "other": {"production": 1}}
    assert policy.select(state) == {
        ModelKey("fraud", 1), ModelKey("other", 2), ModelKey("other", 3)
    }  # fmt: skip
    assert VersionPolicy().select(state) == {
        ModelKey("fraud", 1), ModelKey("fraud", 2), ModelKey("other", 1)
    }  # fmt: skip


async def test_alias_waits_for_a_loadable_version_and_cache_restores(tmp_path: Path) -> None:
    good, broken, good3 = _info(1, GOOD), _info(2, BROKEN), _info(3, GOOD)
    source = ScriptedSource({good.sha256: GOOD, broken.sha256: BROKEN})
    source.snapshot = [
        VersionUpserted(1, "m", 1, good, snapshot=True),
        VersionUpserted(2, "m", 2, broken, snapshot=True),
        AliasSet(3, "m", "production", 1, snapshot=True),
    ]
    executor = ThreadPoolExecutor(2)
    core = ServingCore(executor)
    follower = RegistryFollower(
        core, source, ArtifactCache(tmp_path), backoff=Backoff(0.01, 2, 0.05), drain_delay=0
    )
    await follower.start(5.0)
    assert follower.synced.is_set()
    assert core.resolve("m", "production").key == ModelKey("m", 1)

    await source.live.put(AliasSet(4, "m", "production", 2))  # version 2 does not load
    await asyncio.sleep(0.5)
    assert core.resolve("m", "production").key == ModelKey("m", 1)
    assert [v.key.version for v in core.versions("m")] == [1]

    await source.live.put(VersionUpserted(5, "m", 3, good3))
    await source.live.put(AliasSet(6, "m", "production", 3))
    for _ in range(50):
        if core.is_ready("m", "production") and core.resolve("m", "production").key.version == 3:
            break
        await asyncio.sleep(0.05)
    assert core.resolve("m", "production").key == ModelKey("m", 3)
    await asyncio.sleep(0.2)
    assert [v.key.version for v in core.versions("m")] == [3]
    await follower.close()
    await core.close()

    # A new server with the source down serves what the cache holds.
    source.down = True
    core2 = ServingCore(executor)
    again = RegistryFollower(core2, source, ArtifactCache(tmp_path), backoff=Backoff(0.01, 2, 0.05))
    await again.start(5.0)
    assert again.ready.is_set() and not again.synced.is_set()
    served = core2.resolve("m", "production")
    assert served.key == ModelKey("m", 3) and served.model is not None
    np.testing.assert_allclose(
        served.model.predict(X[:2]).probabilities,  # type: ignore[arg-type]
        LogisticRegression().fit(X, Y).predict_proba(X[:2]),
    )
    await again.close()
    await core2.close()
    executor.shutdown()
