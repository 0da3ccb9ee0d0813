"""What serving knows of the registry: model versions, aliases, the changes between them,
and which versions a policy wants served.

No gRPC here: a :class:`VersionSource` (the registry client, outside the core) turns the
registry's watch stream into the changes below.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

import numpy as np

from mlbackend_serving.core.model import (
    DType,
    FeatureSpec,
    LoadedModel,
    Matrix,
    ModelKey,
    OutputKind,
    OutputSpec,
    Signature,
)

Example = tuple[tuple[float | None, ...], ...]


@dataclass(frozen=True)
class VersionInfo:
    """A READY registry version, with what serving needs to load and warm it."""

    name: str
    version: int
    sha256: str
    format: str
    """``skops`` or ``pickle`` (anything else cannot be served and sets ``problem``)."""
    features: tuple[FeatureSpec, ...]
    output: OutputSpec
    input_example: Example = ()
    description: str = ""
    problem: str = ""
    """Why this version cannot be served (unsupported dtype, format…); empty if it can."""

    @property
    def key(self) -> ModelKey:
        return ModelKey(self.name, self.version)

    def example_matrix(self) -> Matrix | None:
        if not self.input_example:
            return None
        return np.asarray(
            [[np.nan if v is None else v for v in row] for row in self.input_example],
            dtype=np.float64,
        )

    def build(self, estimator: Any) -> LoadedModel:
        """The loaded model of this version around an already verified estimator."""
        return LoadedModel(
            self.key,
            Signature(self.features),
            self.output,
            estimator,
            self.sha256,
            self.example_matrix(),
            {"description": self.description},
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "format": self.format,
            "features": [
                {"name": f.name, "dtype": f.dtype.value, "nullable": f.nullable}
                for f in self.features
            ],
            "output": {
                "kind": self.output.kind.value,
                "classes": list(self.output.classes),
                "decision_threshold": self.output.decision_threshold,
            },
            "input_example": [list(row) for row in self.input_example],
            "description": self.description,
            "problem": self.problem,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VersionInfo:
        output = data["output"]
        return cls(
            name=str(data["name"]),
            version=int(data["version"]),
            sha256=str(data["sha256"]),
            format=str(data["format"]),
            features=tuple(
                FeatureSpec(str(f["name"]), DType(f["dtype"]), bool(f["nullable"]))
                for f in data["features"]
            ),
            output=OutputSpec(
                OutputKind(output["kind"]),
                tuple(output["classes"]),
                output["decision_threshold"],
            ),
            input_example=tuple(
                tuple(None if v is None else float(v) for v in row) for row in data["input_example"]
            ),
            description=str(data.get("description", "")),
            problem=str(data.get("problem", "")),
        )


# --- changes a source reports --------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    revision: int
    snapshot: bool = field(default=False, kw_only=True)
    """Part of the initial snapshot (the state as of ``revision``), not a live change."""


@dataclass(frozen=True)
class VersionUpserted(Change):
    name: str
    version: int
    info: VersionInfo | None
    """None: the version exists but is not READY (pending, failed)."""


@dataclass(frozen=True)
class VersionRemoved(Change):
    name: str
    version: int


@dataclass(frozen=True)
class AliasSet(Change):
    name: str
    alias: str
    version: int


@dataclass(frozen=True)
class AliasRemoved(Change):
    name: str
    alias: str


@dataclass(frozen=True)
class ModelRemoved(Change):
    name: str


@dataclass(frozen=True)
class SnapshotComplete(Change):
    """Every snapshot change has been sent; live changes follow."""


@dataclass(frozen=True)
class Heartbeat(Change):
    """Nothing changed; the stream is alive."""


class SourceUnavailable(Exception):
    """The registry did not answer (down, unreachable, overloaded)."""


class RevisionExpired(Exception):
    """The registry no longer holds the changes after the revision asked for."""


class VersionSource(Protocol):
    """Where model versions come from and how their changes are pushed (the registry)."""

    def watch(self, start_revision: int) -> AsyncIterator[Change]:
        """Start 0: the snapshot, then :class:`SnapshotComplete`, then live changes;
        else only the changes after ``start_revision``. Raises :class:`SourceUnavailable`
        or :class:`RevisionExpired`."""
        ...

    async def download(self, info: VersionInfo, out: BinaryIO) -> None:
        """Write the version's artifact to ``out``, its digest verified against ``info``."""
        ...


# --- the registry as serving sees it -------------------------------------------------------


@dataclass
class RegistryState:
    """READY versions and aliases, kept current by applying changes in revision order."""

    revision: int = 0
    versions: dict[ModelKey, VersionInfo] = field(default_factory=dict)
    aliases: dict[str, dict[str, int]] = field(default_factory=dict)

    def apply(self, change: Change) -> None:
        match change:
            case VersionUpserted(name=name, version=version, info=info):
                key = ModelKey(name, version)
                if info is None:
                    self.versions.pop(key, None)
                else:
                    self.versions[key] = info
            case VersionRemoved(name=name, version=version):
                self.versions.pop(ModelKey(name, version), None)
            case AliasSet(name=name, alias=alias, version=version):
                self.aliases.setdefault(name, {})[alias] = version
            case AliasRemoved(name=name, alias=alias):
                self.aliases.get(name, {}).pop(alias, None)
            case ModelRemoved(name=name):
                self.aliases.pop(name, None)
                for key in [k for k in self.versions if k.name == name]:
                    del self.versions[key]
        self.revision = max(self.revision, change.revision)

    def models(self) -> set[str]:
        return {k.name for k in self.versions} | set(self.aliases)


# --- which versions to serve ---------------------------------------------------------------

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_LATEST = re.compile(r"^latest(?::(\d+))?$")


@dataclass(frozen=True)
class Rule:
    """One entry of a policy: ``model`` (every aliased version), ``model@alias``,
    ``model@latest[:N]`` (the N highest READY versions) or ``model@VERSION``."""

    model: str
    alias: str | None = None
    latest: int = 0
    version: int | None = None

    def select(self, state: RegistryState) -> set[ModelKey]:
        aliases = state.aliases.get(self.model, {})
        if self.version is not None:
            return {ModelKey(self.model, self.version)}
        if self.latest:
            numbers = sorted(k.version for k in state.versions if k.name == self.model)
            return {ModelKey(self.model, v) for v in numbers[-self.latest :]}
        if self.alias is not None:
            target = aliases.get(self.alias)
            return set() if target is None else {ModelKey(self.model, target)}
        return {ModelKey(self.model, v) for v in aliases.values()}


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions serving loads. No rules: every version an alias points at, of every
    model (so production, challenger and experiment variants are all ready)."""

    rules: tuple[Rule, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> VersionPolicy:
        """``fraud_detection@production,other@latest:2,x@3`` (comma or space separated)."""
        rules: list[Rule] = []
        for item in filter(None, re.split(r"[,\s]+", text or "")):
            model, at, spec = item.partition("@")
            if not _NAME.match(model):
                raise ValueError(f"{item!r}: {model!r} is not a model name")
            if not at:
                rules.append(Rule(model))
            elif spec.isdigit():
                if int(spec) < 1:
                    raise ValueError(f"{item!r}: versions start at 1")
                rules.append(Rule(model, version=int(spec)))
            elif latest := _LATEST.match(spec):
                count = int(latest.group(1) or 1)
                if count < 1:
                    raise ValueError(f"{item!r}: latest:N needs N >= 1")
                rules.append(Rule(model, latest=count))
            elif _NAME.match(spec) and spec[0].isalpha():
                rules.append(Rule(model, alias=spec))
            else:
                raise ValueError(f"{item!r}: expected MODEL@ALIAS, MODEL@latest[:N] or MODEL@N")
        return cls(tuple(rules))

    def select(self, state: RegistryState) -> set[ModelKey]:
        """The versions to serve; only ones the registry holds as READY."""
        rules: Iterable[Rule] = self.rules or (Rule(m) for m in state.models())
        wanted: set[ModelKey] = set()
        for rule in rules:
            wanted |= rule.select(state)
        return {k for k in wanted if k in state.versions}

    def follows(self, model: str) -> bool:
        return not self.rules or any(r.model == model for r in self.rules)
