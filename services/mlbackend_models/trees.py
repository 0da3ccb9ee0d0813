"""Validation of scikit-learn's tree internals before anyone may call ``predict``.

``sklearn.tree._tree.Tree`` (every DecisionTree, RandomForest, ExtraTrees,
GradientBoosting) and ``TreePredictor`` (HistGradientBoosting) walk their node arrays
in native code without bounds checks. A crafted artifact could point a child outside
the array, make a cycle, or name a feature column that does not exist: out-of-bounds
reads or a hang at ``predict``. :func:`validate_trees` walks the whole loaded object
graph (pipelines, ensembles, calibrated classifiers, HGB ``_predictors``) and checks
every tree it finds; the first defect is refused naming the type and the node.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mlbackend_runtime.errors import FieldViolation, InvalidInput

TREE = "sklearn.tree._tree.Tree"
TREE_PREDICTOR = "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"
TREE_TYPES = frozenset({TREE, TREE_PREDICTOR})

_TREE_LEAF = -1  # sklearn.tree._tree.TREE_LEAF
# HGB categorical bitsets hold 256 bits (8 uint32 words) per feature.
_MAX_CATEGORY = 255


class TreeDefect(InvalidInput):
    """A tree of the artifact is inconsistent; the message names the type and defect."""


def _qualname(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _defect(type_name: str, where: str, what: str) -> TreeDefect:
    description = f"{type_name} at {where}: {what}"
    return TreeDefect(f"artifact: {description}", [FieldViolation("artifact", description)])


def validate_trees(model: object) -> int:
    """Validate every tree reachable from ``model``; return how many were checked."""
    checked = 0
    for obj, path, bound in _walk(model):
        name = _qualname(obj)
        if name == TREE:
            _validate_tree(obj, path, bound)
            checked += 1
        elif name == TREE_PREDICTOR:
            owner = bound.hgb_owner
            if owner is None:
                raise _defect(name, path, "not inside a HistGradientBoosting estimator")
            _validate_predictor(obj, path, owner)
            checked += 1
    return checked


class _Context:
    """What the enclosing estimators say a tree below them may index."""

    __slots__ = ("hgb_owner", "n_features")

    def __init__(self, n_features: int | None = None, hgb_owner: Any = None) -> None:
        self.n_features = n_features
        self.hgb_owner = hgb_owner

    def child(self, obj: object, attribute: str) -> _Context:
        """The context for ``obj.<attribute>``."""
        if attribute == "_predictors":
            return _Context(None, obj)
        if attribute not in _ENSEMBLE_ATTRIBUTES:
            # Any other attribute (a pipeline step, a final estimator) may see other columns.
            return _Context()
        # Ensembles hand X to their trees unchecked (check_input=False): a tree may index
        # no column beyond what each estimator on the way validated.
        own = obj.__dict__.get("n_features_in_") if hasattr(obj, "__dict__") else None
        bound = self.n_features
        if isinstance(own, int | np.integer):
            bound = int(own) if bound is None else min(bound, int(own))
        return _Context(bound, self.hgb_owner)


# Attributes through which an estimator passes its own input to trees.
_ENSEMBLE_ATTRIBUTES = frozenset({"estimators_", "estimator_", "tree_"})


def _walk(root: object) -> Iterator[tuple[Any, str, _Context]]:
    """Every object reachable through containers and instance state, once each."""
    seen: set[int] = set()
    stack: list[tuple[Any, str, _Context]] = [(root, "model", _Context())]
    while stack:
        obj, path, ctx = stack.pop()
        if id(obj) in seen or obj is None or isinstance(obj, str | bytes | int | float | bool):
            continue
        seen.add(id(obj))
        yield obj, path, ctx
        if isinstance(obj, dict):
            for key, value in obj.items():
                stack.append((key, f"{path}[{key!r}]", ctx))
                stack.append((value, f"{path}[{key!r}]", ctx))
        elif isinstance(obj, list | tuple | set | frozenset):
            for i, item in enumerate(obj):
                stack.append((item, f"{path}[{i}]", ctx))
        elif isinstance(obj, np.ndarray):
            if obj.dtype == object:
                for i, item in enumerate(obj.ravel()):
                    stack.append((item, f"{path}.flat[{i}]", ctx))
        else:
            state = getattr(obj, "__dict__", None)
            if isinstance(state, dict):
                for key, value in state.items():
                    stack.append((value, f"{path}.{key}", ctx.child(obj, str(key))))
            for slot in getattr(type(obj), "__slots__", ()):
                if isinstance(slot, str) and hasattr(obj, slot):
                    stack.append((getattr(obj, slot), f"{path}.{slot}", ctx.child(obj, slot)))


def _validate_tree(tree: Any, path: str, ctx: _Context) -> None:
    def bad(what: str) -> TreeDefect:
        return _defect(TREE, path, what)

    node_count = int(tree.node_count)
    # node_count comes from the file independently of the node array; check it before
    # __getstate__ makes a view of node_count nodes.
    if node_count < 1 or node_count != int(tree.capacity):
        raise bad(f"node_count {node_count} does not match the {tree.capacity} nodes stored")
    n_features = int(tree.n_features)
    if n_features < 1:
        raise bad(f"n_features is {n_features}")
    bound = n_features if ctx.n_features is None else min(n_features, ctx.n_features)
    n_outputs = int(tree.n_outputs)
    n_classes = np.asarray(tree.n_classes)
    if n_outputs < 1 or n_classes.shape != (n_outputs,) or (n_classes < 1).any():
        raise bad(f"n_outputs {n_outputs} / n_classes {n_classes.tolist()} are inconsistent")

    state = tree.__getstate__()
    nodes = state["nodes"]
    values = np.asarray(state["values"])
    if nodes.shape != (node_count,):
        raise bad(f"node array has shape {nodes.shape}, expected ({node_count},)")
    expected_values = (node_count, n_outputs, int(tree.max_n_classes))
    if values.shape != expected_values:
        raise bad(f"value array has shape {values.shape}, expected {expected_values}")
    if not np.isfinite(values).all():
        not_finite = (~np.isfinite(values)).reshape(node_count, -1).any(axis=1)
        raise bad(f"node {_first(not_finite)}: value is not finite")

    left = nodes["left_child"].astype(np.int64)
    right = nodes["right_child"].astype(np.int64)
    depth = _check_structure(left, right, _TREE_LEAF, node_count, bad)
    internal = left != _TREE_LEAF
    feature = nodes["feature"].astype(np.int64)
    _check_features(feature, internal, bound, bad)
    threshold = nodes["threshold"].astype(np.float64)
    # +inf is sklearn's threshold for a split that sends only missing values right.
    bad_threshold = internal & (np.isnan(threshold) | (threshold == -np.inf))
    if bad_threshold.any():
        raise bad(f"node {_first(bad_threshold)}: threshold {threshold[bad_threshold][0]}")
    if "missing_go_to_left" in nodes.dtype.names and (nodes["missing_go_to_left"] > 1).any():
        raise bad("missing_go_to_left is not 0 or 1")
    if int(tree.max_depth) < depth:
        raise bad(f"max_depth {tree.max_depth} is below the actual depth {depth}")


def _validate_predictor(predictor: Any, path: str, owner: Any) -> None:
    from sklearn.ensemble._hist_gradient_boosting.common import (
        PREDICTOR_RECORD_DTYPE,
    )

    def bad(what: str) -> TreeDefect:
        return _defect(TREE_PREDICTOR, path, what)

    nodes = predictor.nodes
    if not isinstance(nodes, np.ndarray) or nodes.dtype != PREDICTOR_RECORD_DTYPE:
        raise bad("nodes is not an array of PREDICTOR_RECORD_DTYPE")
    if nodes.ndim != 1 or nodes.shape[0] < 1:
        raise bad(f"nodes has shape {nodes.shape}")
    n = int(nodes.shape[0])
    n_features = owner.__dict__.get("n_features_in_")
    if not isinstance(n_features, int | np.integer) or n_features < 1:
        raise bad("the owning estimator has no valid n_features_in_")
    is_leaf = nodes["is_leaf"]
    if (is_leaf > 1).any():
        raise bad("is_leaf is not 0 or 1")
    internal = is_leaf == 0
    # Leaves carry 0 children in HGB; only internal nodes' children are followed.
    left = np.where(internal, nodes["left"].astype(np.int64), -1)
    right = np.where(internal, nodes["right"].astype(np.int64), -1)
    _check_structure(left, right, -1, n, bad)
    feature = nodes["feature_idx"].astype(np.int64)
    _check_features(feature, internal, int(n_features), bad)
    threshold = nodes["num_threshold"]
    numeric = internal & (nodes["is_categorical"] == 0)
    bad_threshold = numeric & (np.isnan(threshold) | (threshold == -np.inf))
    if bad_threshold.any():
        raise bad(f"node {_first(bad_threshold)}: threshold {threshold[bad_threshold][0]}")
    if not np.isfinite(nodes["value"]).all():
        raise bad(f"node {_first(~np.isfinite(nodes['value']))}: value is not finite")
    if (nodes["missing_go_to_left"] > 1).any():
        raise bad("missing_go_to_left is not 0 or 1")
    _check_categorical(predictor, nodes, internal, owner, bad)


def _check_structure(
    left: NDArray[np.int64], right: NDArray[np.int64], leaf: int, n: int, bad: Any
) -> int:
    """Children in range and after their parent (no cycles); leaves have none. → depth."""
    index = np.arange(n)
    left_leaf, right_leaf = left == leaf, right == leaf
    mixed = left_leaf != right_leaf
    if mixed.any():
        raise bad(f"node {_first(mixed)}: one child is a leaf marker, the other is not")
    internal = ~left_leaf
    for name, child in (("left", left), ("right", right)):
        out = internal & ((child <= index) | (child >= n))
        if out.any():
            i = _first(out)
            raise bad(f"node {i}: {name} child index {child[i]} out of range (nodes: {n})")
    # Parents come before children, so one forward pass yields each node's depth and
    # catches nodes reached twice.
    parents = np.zeros(n, dtype=np.int64)
    np.add.at(parents, left[internal], 1)
    np.add.at(parents, right[internal], 1)
    if parents[0] != 0 or (parents[1:] > 1).any():
        raise bad(f"node {_first(parents[1:] > 1) + 1}: reached from more than one parent")
    # Level by level from the root (children have higher indices, so this ends).
    depth, level = 0, np.array([0])
    while True:
        level = level[internal[level]]
        if not level.size:
            return depth
        level = np.concatenate([left[level], right[level]])
        depth += 1


def _check_features(
    feature: NDArray[np.int64], internal: NDArray[np.bool_], n_features: int, bad: Any
) -> None:
    out = internal & ((feature < 0) | (feature >= n_features))
    if out.any():
        i = _first(out)
        raise bad(f"node {i}: feature index {feature[i]} out of range (n_features {n_features})")


def _check_categorical(
    predictor: Any, nodes: Any, internal: NDArray[np.bool_], owner: Any, bad: Any
) -> None:
    categorical = internal & (nodes["is_categorical"] != 0)
    raw = np.asarray(predictor.raw_left_cat_bitsets)
    binned = np.asarray(predictor.binned_left_cat_bitsets)
    if not categorical.any():
        return
    if raw.ndim != 2 or raw.shape[1] != 8 or binned.shape != raw.shape:
        raise bad("categorical bitsets have the wrong shape")
    out = categorical & (nodes["bitset_idx"] >= raw.shape[0])
    if out.any():
        raise bad(f"node {_first(out)}: bitset index out of range")
    # predict() indexes the known-category bitsets through the owner's bin mapper.
    mapper = owner.__dict__.get("_bin_mapper")
    is_cat = getattr(mapper, "is_categorical", None)
    features = nodes["feature_idx"][categorical]
    if is_cat is None or not np.asarray(is_cat, dtype=bool)[features].all():
        raise bad("a categorical split on a feature the estimator does not treat as categorical")
    for f in np.flatnonzero(np.asarray(is_cat, dtype=bool)):
        known = np.asarray(mapper.bin_thresholds_[f])
        if known.size and (~np.isfinite(known) | (known < 0) | (known > _MAX_CATEGORY)).any():
            raise bad(f"feature {f}: a known category is outside 0..{_MAX_CATEGORY}")


def _first(mask: NDArray[np.bool_]) -> int:
    return int(np.flatnonzero(mask)[0])
