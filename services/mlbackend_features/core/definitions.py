"""Applying definitions: checks, compatibility with what is stored, revisions and versions.

Compatible changes (new features, new descriptions, constraints, TTL) raise a
definition's revision. Incompatible ones — a dtype or join-key change, a view's
entities, a removed feature that any feature service version reads — are refused with
FAILED_PRECONDITION unless forced by an admin. Feature services are immutable: a
changed one becomes the next version.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from mlbackend_features.core import transforms
from mlbackend_features.core.model import (
    KEY_DTYPES,
    NAME_PATTERN,
    Actor,
    ChangeType,
    Constraints,
    DefinitionChange,
    DefinitionSet,
    DType,
    Entity,
    FeatureService,
    FeatureView,
)
from mlbackend_features.core.validation import coerce
from mlbackend_features.stores.definitions import Definitions
from mlbackend_runtime.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidInput,
    PermissionDenied,
)

_OUTPUT_ONLY = {"revision", "create_time", "update_time"}


@dataclass
class ApplyPlan:
    changes: list[DefinitionChange] = field(default_factory=list)
    entities: list[Entity] = field(default_factory=list)
    views: list[FeatureView] = field(default_factory=list)
    services: list[FeatureService] = field(default_factory=list)


def _name(name: str, path: str, out: list[FieldViolation]) -> None:
    if not NAME_PATTERN.match(name):
        out.append(FieldViolation(path, "must match [A-Za-z_][A-Za-z0-9_]{0,127}"))


def _check_entity(entity: Entity, path: str, out: list[FieldViolation]) -> None:
    _name(entity.name, f"{path}.name", out)
    if not entity.join_keys:
        out.append(FieldViolation(f"{path}.join_keys", "an entity needs at least one join key"))
    seen: set[str] = set()
    for i, key in enumerate(entity.join_keys):
        _name(key.name, f"{path}.join_keys[{i}].name", out)
        if key.dtype not in KEY_DTYPES:
            out.append(FieldViolation(f"{path}.join_keys[{i}].dtype", "must be INT64 or STRING"))
        if key.name in seen:
            out.append(FieldViolation(f"{path}.join_keys[{i}].name", "listed twice"))
        seen.add(key.name)


def _check_view(
    view: FeatureView, path: str, entities: dict[str, Entity], out: list[FieldViolation]
) -> None:
    _name(view.name, f"{path}.name", out)
    if not view.entities:
        out.append(FieldViolation(f"{path}.entities", "a view needs at least one entity"))
    for i, name in enumerate(view.entities):
        if name not in entities:
            out.append(FieldViolation(f"{path}.entities[{i}]", f"unknown entity {name!r}"))
    if not view.features:
        out.append(FieldViolation(f"{path}.features", "a view needs at least one feature"))
    if view.ttl.total_seconds() < 0:
        out.append(FieldViolation(f"{path}.ttl", "must not be negative"))
    if view.offline_retention.total_seconds() < 0:
        out.append(FieldViolation(f"{path}.offline_retention", "must not be negative"))
    seen: set[str] = set()
    for i, feature in enumerate(view.features):
        fpath = f"{path}.features[{i}]"
        _name(feature.name, f"{fpath}.name", out)
        if feature.name in seen:
            out.append(FieldViolation(f"{fpath}.name", "listed twice"))
        if feature.dtype is DType.UNSPECIFIED:
            out.append(FieldViolation(f"{fpath}.dtype", "is required"))
        seen.add(feature.name)
        _check_constraints(feature.constraints, feature.dtype, f"{fpath}.constraints", out)


def _check_constraints(
    rules: Constraints, dtype: DType, path: str, out: list[FieldViolation]
) -> None:
    if rules.min is not None and rules.max is not None and rules.min > rules.max:
        out.append(FieldViolation(f"{path}.max", "must be >= min"))
    if rules.max_length < 0:
        out.append(FieldViolation(f"{path}.max_length", "must not be negative"))
    for j, allowed in enumerate(rules.allowed_values):
        if allowed is None or coerce(dtype, allowed)[1]:
            out.append(FieldViolation(f"{path}.allowed_values[{j}]", f"must be a {dtype}"))


def _view_breaks(old: FeatureView, new: FeatureView, used: dict[str, set[str]]) -> list[str]:
    problems: list[str] = []
    if old.entities != new.entities:
        problems.append(f"entities change from {list(old.entities)} to {list(new.entities)}")
    for feature in old.features:
        replacement = new.feature(feature.name)
        if replacement is None:
            users = used.get(f"{old.name}:{feature.name}")
            if users:
                problems.append(f"feature {feature.name!r} is removed but read by {sorted(users)}")
        elif replacement.dtype != feature.dtype:
            problems.append(
                f"feature {feature.name!r} changes dtype {feature.dtype} -> {replacement.dtype}"
            )
    return problems


def plan(
    current: Definitions,
    request: DefinitionSet,
    *,
    force: bool,
    actor: Actor,
    now: datetime,
) -> ApplyPlan:
    """What applying ``request`` changes, or the domain error that refuses it."""
    if force and not actor.is_admin:
        raise PermissionDenied("force needs the admin role")
    violations: list[FieldViolation] = []
    _duplicates([e.name for e in request.entities], "entities", violations)
    _duplicates([v.name for v in request.feature_views], "feature_views", violations)
    _duplicates([s.name for s in request.feature_services], "feature_services", violations)
    entities = dict(current.entities)
    entities.update({e.name: e for e in request.entities})
    views = dict(current.views)
    views.update({v.name: v for v in request.feature_views})
    for i, entity in enumerate(request.entities):
        _check_entity(entity, f"entities[{i}]", violations)
    for i, view in enumerate(request.feature_views):
        _check_view(view, f"feature_views[{i}]", entities, violations)
    for i, service in enumerate(request.feature_services):
        _name(service.name, f"feature_services[{i}].name", violations)
        for j, request_input in enumerate(service.request_inputs):
            rpath = f"feature_services[{i}].request_inputs[{j}]"
            _name(request_input.name, f"{rpath}.name", violations)
            if request_input.dtype is DType.UNSPECIFIED:
                violations.append(FieldViolation(f"{rpath}.dtype", "is required"))
            _check_constraints(
                request_input.constraints, request_input.dtype, f"{rpath}.constraints", violations
            )
        if not violations:
            try:
                transforms.compile_service(service, views, f"feature_services[{i}]")
            except InvalidInput as exc:
                violations.extend(exc.violations)
    if violations:
        raise InvalidInput(
            f"invalid definitions; first: {violations[0].field}: {violations[0].description}",
            violations,
        )

    # Which feature refs each feature service (any version, new ones too) reads.
    used: dict[str, set[str]] = {}
    for versions in current.services.values():
        for service in versions:
            for ref in service.feature_refs:
                used.setdefault(ref, set()).add(service.ref)
    for service in request.feature_services:
        for ref in service.feature_refs:
            used.setdefault(ref, set()).add(service.name)

    result = ApplyPlan()
    breaking: list[str] = []
    for entity in request.entities:
        old = current.entities.get(entity.name)
        problems = (
            [f"join keys change from {_keys(old)} to {_keys(entity)}"]
            if old is not None and old.join_keys != entity.join_keys
            else []
        )
        breaking += [f"entity {entity.name!r}: {p}" for p in problems]
        change, stored = _revise(old, entity, bool(problems), now)
        result.changes.append(
            DefinitionChange("entity", entity.name, change, stored.revision, "; ".join(problems))
        )
        if change is not ChangeType.UNCHANGED:
            result.entities.append(stored)
    for view in request.feature_views:
        old_view = current.views.get(view.name)
        problems = _view_breaks(old_view, view, used) if old_view is not None else []
        breaking += [f"feature view {view.name!r}: {p}" for p in problems]
        change, stored_view = _revise(old_view, view, bool(problems), now)
        result.changes.append(
            DefinitionChange(
                "feature_view", view.name, change, stored_view.revision, "; ".join(problems)
            )
        )
        if change is not ChangeType.UNCHANGED:
            result.views.append(stored_view)
    if breaking and not force:
        raise FailedPrecondition(
            "incompatible change(s), apply with force (admin) to accept: " + "; ".join(breaking)
        )
    for i, service in enumerate(request.feature_services):
        versions = current.services.get(service.name, [])
        latest = versions[-1] if versions else None
        if latest is not None and latest.same_content(service):
            result.changes.append(
                DefinitionChange(
                    "feature_service", service.name, ChangeType.UNCHANGED, latest.version, ""
                )
            )
            continue
        compiled = transforms.compile_service(service, views, f"feature_services[{i}]")
        version = (latest.version if latest else 0) + 1
        result.services.append(
            service.model_copy(
                update={
                    "version": version,
                    "output_schema": compiled.schema,
                    "create_time": now,
                    "created_by": actor.identity,
                }
            )
        )
        result.changes.append(
            DefinitionChange(
                "feature_service",
                service.name,
                ChangeType.UPDATED if latest else ChangeType.CREATED,
                version,
                f"new version {version}" if latest else "",
            )
        )
    return result


def _keys(entity: Entity) -> list[str]:
    return [f"{k.name}:{k.dtype}" for k in entity.join_keys]


def _duplicates(names: Sequence[str], path: str, out: list[FieldViolation]) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            out.append(FieldViolation(f"{path}[{i}].name", "defined twice in this request"))
        seen.add(name)


D = TypeVar("D", Entity, FeatureView)


def _revise(old: D | None, new: D, breaking: bool, now: datetime) -> tuple[ChangeType, D]:
    if old is None:
        return ChangeType.CREATED, new.model_copy(
            update={"revision": 1, "create_time": now, "update_time": now}
        )
    if old.model_dump(exclude=_OUTPUT_ONLY) == new.model_dump(exclude=_OUTPUT_ONLY):
        return ChangeType.UNCHANGED, old
    change = ChangeType.FORCED if breaking else ChangeType.UPDATED
    return change, new.model_copy(
        update={"revision": old.revision + 1, "create_time": old.create_time, "update_time": now}
    )
