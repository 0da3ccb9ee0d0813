"""Faster ``predict_proba`` (classifiers) and ``predict`` (regressors) for tree models,
giving exactly scikit-learn's output.

scikit-learn predicts with a tree ensemble one tree at a time: for 100 trees that is
100 Python calls, each releasing and re-taking the GIL (a RandomForest adds input
validation, joblib dispatch and a lock per tree: about 3 ms a call whether it has 1
row or 32; a HistGradientBoosting classifier about 0.45 ms). In a server the event
loop wants that same GIL, so every hand-over stalls both. Serving has already
validated the rows (float64, the signature's width, finite or allowed NaN), so it
can walk every tree itself: in C (``mlbackend_serving/_treewalk.c``, built with the
package; one pass down each tree per row, the GIL released meanwhile), or, where the
package was installed without a compiler, with a few numpy operations per tree level.
Measured here, one row of the 100-tree HistGradientBoosting model: C 4 µs, numpy
30-70 µs; 32 rows: 16 µs against 210-330 µs.

Supported: random forests, extra trees and decision trees; HistGradientBoosting
(binary, multiclass, regression with any link); a Pipeline ending in one of them, as
``mlbackend train`` makes them. The transformers those recipes use (a NaN imputer,
one-hot codes, a ColumnTransformer routing columns by position) run as numpy too;
scikit-learn validates its input for 0.3-1.4 ms per ``transform`` call whatever the
rows. Other transformers run their own ``transform``.

The walk repeats scikit-learn's comparisons (same dtypes, same NaN rule) and sums the
trees in the same order, so the result is bit-for-bit the same; a fast path is only
used after it gave exactly the estimator's own output on probe rows when the model
was loaded (otherwise, or for anything unsupported — categorical splits,
multi-output — the estimator's own method is used).
"""

from __future__ import annotations

import functools
import logging
import math
import weakref
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

_treewalk: ModuleType | None
try:
    from mlbackend_serving import _treewalk
except ImportError:  # installed without a C compiler: the numpy walk
    _treewalk = None

logger = logging.getLogger("mlbackend.serving")

NATIVE = _treewalk is not None
"""Whether the C walk was built (CI requires it; see tests/unit/test_serving_fastpath.py)."""

Proba = Callable[[NDArray[np.float64]], NDArray[np.float64]]
"""Rows → the model's output: a classifier's probabilities, a regressor's values."""
PROBE_ROWS = 64

_LIGHT: weakref.WeakSet[Proba] = weakref.WeakSet()

Row = Callable[["array[float]"], tuple[float, ...]]
"""One row's values (float64, the signature's width, all finite) → the same numbers
its :data:`Proba` gives for it as a one-row matrix, without numpy: ModelInfer's
single-row lane (``ServingCore.predict_row``)."""

_ROWS: weakref.WeakKeyDictionary[Proba, Row] = weakref.WeakKeyDictionary()


def row_of(fn: Proba) -> Row | None:
    """The single-row form of the fast path ``fn``, where it has one that gave exactly
    ``fn``'s numbers on the probe rows (C walk only; not for Pipelines or multiclass
    boosting, whose transforms and softmax stay numpy's)."""
    return _ROWS.get(fn)


def _with_row(fn: Proba, row: Row) -> Proba:
    _ROWS[fn] = row
    return fn


def _light(fn: Proba) -> Proba:
    """``fn`` marked light: the C walk, or a transformer's numpy ``transform``."""
    _LIGHT.add(fn)
    return fn


def is_light(fn: Proba) -> bool:
    """Whether ``fn`` is a fast path that walks its trees in C, with numpy transformers
    at most: a call costs microseconds, no scikit-learn method runs, nothing to gain by
    making callers queue for one call together (see ``ServingCore.predict_light``)."""
    return fn in _LIGHT


@dataclass(frozen=True)
class _Forest:
    """Every node of every tree in flat arrays; a leaf points to itself both ways.
    ``values`` holds each node's output (one column per output: a class's probability,
    or a boosting tree's raw score), summed over the leaves a row reaches.

    The ``pair_*`` arrays index nodes by *position*, ``2 * node + went_right``: a
    node's feature and threshold sit at both of its positions, and ``pair_child``
    holds the position of the child each way. A level of the walk is then four gathers,
    a comparison and an addition, about half the work of the general form, which also
    takes each node's side for a missing value.
    """

    roots: NDArray[np.intp]
    feature: NDArray[np.intp]
    threshold: NDArray[np.float64]
    left: NDArray[np.intp]
    right: NDArray[np.intp]
    missing_left: NDArray[np.bool_]
    depth: int
    pair_feature: NDArray[np.intp]
    pair_threshold: NDArray[np.float64]
    pair_child: NDArray[np.intp]
    values: NDArray[np.float64]
    nodes: bytes | None
    """The nodes packed for the C walk (``_treewalk.pack_nodes``); None: the numpy walk."""

    def sums(self, x: NDArray[np.float64], init: NDArray[np.float64]) -> NDArray[np.float64]:
        """Per row of ``x`` (C-contiguous float64), ``init`` plus the values of the leaves
        it reaches, added tree after tree in order as scikit-learn does: (rows, outputs)."""
        if self.nodes is not None and _treewalk is not None:
            out = np.empty((len(x), len(init)), dtype=np.float64)
            _treewalk.sum_leaves(x, x.shape[1], self.roots, self.nodes, self.values, init, out)
            return out
        per_tree = self.values[self.leaves(x)]  # (rows, trees, outputs)
        terms = np.empty((len(x), per_tree.shape[1] + 1, len(init)), dtype=np.float64)
        terms[:, 0, :] = init
        terms[:, 1:, :] = per_tree
        return np.cumsum(terms, axis=1)[:, -1, :]

    def leaves(self, x: NDArray[Any]) -> NDArray[np.intp]:
        """The leaf each row reaches in each tree: shape (rows, trees)."""
        n, width = x.shape
        flat = x.ravel()
        # Checked once for the whole input, not per level: a single row walks ~9 levels.
        if not np.isnan(flat).any():
            return np.broadcast_to(self._leaves_of_numbers(x, flat), (n, len(self.roots)))
        row_start = (np.arange(n, dtype=np.intp) * width)[:, None]
        node: NDArray[np.intp] = self.roots  # (trees,): broadcast against the rows below
        for _ in range(self.depth):
            value = flat[row_start + self.feature[node]]
            go_left = value <= self.threshold[node]
            go_left = np.where(np.isnan(value), self.missing_left[node], go_left)
            node = np.where(go_left, self.left[node], self.right[node])
        return np.broadcast_to(node, (n, len(self.roots)))

    def _leaves_of_numbers(self, x: NDArray[Any], flat: NDArray[Any]) -> NDArray[np.intp]:
        """:meth:`leaves` when no value is NaN: right exactly where ``value <= threshold``
        is false (infinities included), as scikit-learn decides."""
        feature, threshold, child = self.pair_feature, self.pair_threshold, self.pair_child
        position: NDArray[np.intp] = 2 * self.roots
        if len(x) == 1:
            row = flat
            for _ in range(self.depth):
                position = child[position + (row[feature[position]] > threshold[position])]
        else:
            row_start = (np.arange(len(x), dtype=np.intp) * x.shape[1])[:, None]
            for _ in range(self.depth):
                value = flat[row_start + feature[position]]
                position = child[position + (value > threshold[position])]
        return position >> 1


def _flatten(
    trees: list[dict[str, NDArray[Any]]], values: list[NDArray[Any]], native: bool
) -> _Forest:
    roots, feature, threshold, left, right, missing, depth = [], [], [], [], [], [], 0
    offset = 0
    for t in trees:
        size = len(t["feature"])
        idx = np.arange(size, dtype=np.intp)
        leaf = t["is_leaf"]
        roots.append(offset)
        feature.append(np.where(leaf, 0, t["feature"]).astype(np.intp))
        threshold.append(t["threshold"].astype(np.float64))
        left.append(np.where(leaf, idx, t["left"]).astype(np.intp) + offset)
        right.append(np.where(leaf, idx, t["right"]).astype(np.intp) + offset)
        missing.append(t["missing_left"].astype(bool))
        depth = max(depth, _depth(t["left"], t["right"], leaf))
        offset += size
    all_feature, all_threshold = np.concatenate(feature), np.concatenate(threshold)
    all_left, all_right = np.concatenate(left), np.concatenate(right)
    all_missing = np.concatenate(missing)
    nodes = None
    if native and _treewalk is not None:
        nodes = _treewalk.pack_nodes(all_feature, all_threshold, all_left, all_right, all_missing)
    pair_child = np.empty(2 * len(all_left), dtype=np.intp)
    pair_child[0::2] = 2 * all_left
    pair_child[1::2] = 2 * all_right
    return _Forest(
        np.asarray(roots, dtype=np.intp),
        all_feature,
        all_threshold,
        all_left,
        all_right,
        all_missing,
        depth,
        np.repeat(all_feature, 2),
        np.repeat(all_threshold, 2),
        pair_child,
        np.ascontiguousarray(np.concatenate(values), dtype=np.float64),
        nodes,
    )


def _depth(left: NDArray[Any], right: NDArray[Any], leaf: NDArray[np.bool_]) -> int:
    deepest, level = 0, [0]
    while level:
        level = [c for n in level if not leaf[n] for c in (int(left[n]), int(right[n]))]
        deepest += bool(level)
    return deepest


def _random_forest(estimator: Any, native: bool) -> Proba | None:
    """Random forests and extra trees, classifiers (``predict_proba``) or regressors
    (``predict``); a single decision tree as a forest of one."""
    from sklearn.base import is_regressor
    from sklearn.ensemble._forest import ForestClassifier, ForestRegressor
    from sklearn.tree import BaseDecisionTree

    if isinstance(estimator, BaseDecisionTree):
        members = [estimator]
    elif isinstance(estimator, ForestClassifier | ForestRegressor):
        members = list(estimator.estimators_)
    else:
        return None
    if estimator.n_outputs_ != 1:
        return None
    regressor = is_regressor(estimator)
    # A classifier's leaf holds each class's fraction; a regressor's, one value.
    n_outputs = 1 if regressor else int(estimator.n_classes_)
    trees, values = [], []
    for e in members:
        t = e.tree_
        size = t.node_count
        trees.append(
            {
                "feature": t.feature,
                "threshold": t.threshold,
                "left": t.children_left,
                "right": t.children_right,
                "is_leaf": t.children_left == -1,
                "missing_left": getattr(t, "missing_go_to_left", np.zeros(size, dtype=bool)),
            }
        )
        values.append(t.value[:, 0, :n_outputs])
    if not trees:
        return None
    forest = _flatten(trees, values, native)
    zero = np.zeros(n_outputs, dtype=np.float64)
    n_trees = len(trees)

    def predict(rows: NDArray[np.float64]) -> NDArray[np.float64]:
        # Forests compare float32 features (their DTYPE) with float64 thresholds: the
        # values rounded to float32, then compared as float64, are what they compare.
        x = np.ascontiguousarray(rows, dtype=np.float32).astype(np.float64)
        # Summed from zero tree after tree, as scikit-learn's sequential path does.
        out = forest.sums(x, zero)
        out /= n_trees
        return out[:, 0] if regressor else out

    if forest.nodes is None or _treewalk is None:
        return predict
    walk, nodes, zeros = _treewalk.sum_leaves, forest.nodes, [0.0] * n_outputs

    def row(values: array[float]) -> tuple[float, ...]:
        x = array("d", array("f", values))  # rounded to float32, as ``predict`` does
        out = array("d", zeros)
        walk(x, len(x), forest.roots, nodes, forest.values, zero, out)
        return tuple([total / n_trees for total in out])

    return _with_row(_light(predict), row)


def _hist_gradient_boosting(estimator: Any, native: bool) -> Proba | None:
    """HistGradientBoosting classifiers (``predict_proba``) and regressors (``predict``)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    if not isinstance(estimator, HistGradientBoostingClassifier | HistGradientBoostingRegressor):
        return None
    regressor = isinstance(estimator, HistGradientBoostingRegressor)
    per_iteration = int(estimator.n_trees_per_iteration_)  # one tree per class if multiclass
    trees, values = [], []
    for predictors in estimator._predictors:
        for k, predictor in enumerate(predictors):
            nodes = predictor.nodes
            if nodes["is_categorical"].any():
                return None
            trees.append(
                {
                    "feature": nodes["feature_idx"],
                    "threshold": nodes["num_threshold"],
                    "left": nodes["left"],
                    "right": nodes["right"],
                    "is_leaf": nodes["is_leaf"].astype(bool),
                    "missing_left": nodes["missing_go_to_left"].astype(bool),
                }
            )
            # A tree adds to its own class's raw score only (adding 0.0 to the others
            # changes no value), so each class sums its trees in iteration order.
            value = np.zeros((len(nodes), per_iteration), dtype=np.float64)
            value[:, k] = nodes["value"]
            values.append(value)
    if not trees:
        return None
    forest = _flatten(trees, values, native)
    baseline = np.asarray(estimator._baseline_prediction, dtype=np.float64).reshape(-1)
    loss = estimator._loss
    binary = _binary_logit(loss)

    def predict(rows: NDArray[np.float64]) -> NDArray[np.float64]:
        # The baseline, then each tree in order: scikit-learn's own summation order.
        raw = forest.sums(np.ascontiguousarray(rows, dtype=np.float64), baseline)
        if regressor:
            return np.asarray(loss.link.inverse(raw.ravel()), dtype=np.float64)
        if binary is not None:
            return binary(raw[:, 0])
        return np.asarray(loss.predict_proba(raw), dtype=np.float64)

    if forest.nodes is None or _treewalk is None:
        return predict
    identity = regressor and type(loss.link).__name__ == "IdentityLink"
    if not identity and (regressor or binary is None):
        return _light(predict)  # a link or a softmax of its own: numpy's, one row or many
    walk, nodes, start = _treewalk.sum_leaves, forest.nodes, baseline.tolist()

    def row(values: array[float]) -> tuple[float, ...]:
        out = array("d", start)
        walk(values, len(values), forest.roots, nodes, forest.values, baseline, out)
        if identity:
            return (out[0],)
        positive = 1.0 / (1.0 + math.exp(-out[0]))  # expit, as ``_binary_logit``
        return (1.0 - positive, positive)

    return _with_row(_light(predict), row)


def _binary_logit(loss: Any) -> Proba | None:
    """A binary classifier's probabilities from its raw scores, as its loss's
    ``predict_proba`` computes them (``expit``, then one minus it), without that
    method's checks and reshaping: ~3 µs of a single-row prediction's ~10."""
    try:  # scikit-learn's private modules: another version may have moved them
        from scipy.special import expit
        from sklearn._loss.link import LogitLink
        from sklearn._loss.loss import HalfBinomialLoss
    except ImportError:
        return None
    if type(loss) is not HalfBinomialLoss or type(loss.link) is not LogitLink:
        return None

    def proba(raw: NDArray[np.float64]) -> NDArray[np.float64]:
        out = np.empty((len(raw), 2), dtype=np.float64)
        out[:, 1] = expit(raw)
        out[:, 0] = 1 - out[:, 1]
        return out

    return proba


def _pipeline(estimator: Any, native: bool) -> Proba | None:
    """A scikit-learn Pipeline ending in a supported model (what ``mlbackend train``
    makes): its transformers, then the model's fast path, which is what the Pipeline's
    own ``predict_proba`` (or ``predict``) computes. The transformers the recipes use
    run as numpy (:func:`_transform_of`); others run their own ``transform``."""
    from sklearn.pipeline import Pipeline

    if not isinstance(estimator, Pipeline) or not estimator.steps:
        return None
    final = _fast(estimator.steps[-1][1], native)
    if final is None:
        return None
    transform = _chain(estimator.steps[:-1])
    if transform is None:
        return final

    def predict(rows: NDArray[np.float64]) -> NDArray[np.float64]:
        return final(transform(rows))

    return _light(predict) if is_light(final) and is_light(transform) else predict


def _is_identity(step: Any) -> bool:
    """``None``, ``"passthrough"``, or what a fitted ColumnTransformer makes of the
    latter (a FunctionTransformer without a function)."""
    from sklearn.preprocessing import FunctionTransformer

    if step is None or (isinstance(step, str) and step == "passthrough"):
        return True
    return type(step) is FunctionTransformer and step.func is None


def _transform_of(step: Any) -> Proba:
    """A fitted transformer's ``transform``: as numpy for the kinds ``mlbackend train``
    uses (a NaN imputer, one-hot codes, columns routed to those, pipelines of them),
    scikit-learn's own for anything else. The whole model is checked at load anyway."""
    builders = (_nan_imputer, _one_hot, _columns, _transformer_pipeline)
    own: Proba = step.transform
    return _first(functools.partial(build, step) for build in builders) or own


def _transformer_pipeline(step: Any) -> Proba | None:
    from sklearn.pipeline import Pipeline

    if type(step) is not Pipeline:
        return None
    return _chain(step.steps) or _light(_as_float)


def _chain(steps: Sequence[tuple[str, Any]]) -> Proba | None:
    """The fitted transformers of ``steps`` one after the other (each as
    :func:`_transform_of`), their output as float64; None when all pass rows through."""
    transforms = [_transform_of(step) for _, step in steps if not _is_identity(step)]
    if not transforms:
        return None

    def transform(rows: NDArray[np.float64]) -> NDArray[np.float64]:
        x: Any = rows
        for each in transforms:
            x = each(x)
        return _as_float(x)

    return _light(transform) if all(is_light(each) for each in transforms) else transform


def _as_float(rows: Any) -> NDArray[np.float64]:
    return np.asarray(rows, dtype=np.float64)


def _columns(step: Any) -> Proba | None:
    """A fitted ColumnTransformer with dense output and columns given by position."""
    from sklearn.compose import ColumnTransformer

    if type(step) is not ColumnTransformer or step.sparse_output_:
        return None
    parts: list[tuple[NDArray[np.intp], Proba | None]] = []
    for _, transformer, columns in step.transformers_:
        if isinstance(transformer, str) and transformer == "drop":
            continue
        positions = np.asarray(columns)
        if positions.dtype.kind not in "iu" or positions.ndim != 1:
            return None  # names, masks, slices: scikit-learn's own
        parts.append((positions, None if _is_identity(transformer) else _transform_of(transformer)))

    def transform(rows: NDArray[np.float64]) -> NDArray[np.float64]:
        x = np.asarray(rows, dtype=np.float64)
        blocks = [
            x[:, positions] if each is None else each(x[:, positions]) for positions, each in parts
        ]
        return np.hstack([np.asarray(b, dtype=np.float64) for b in blocks])

    own = any(each is not None and not is_light(each) for _, each in parts)
    return transform if own else _light(transform)


def _one_hot(step: Any) -> Proba | None:
    """A fitted OneHotEncoder of numeric codes, dense, unknown codes ignored: per column,
    one 0.0 / 1.0 column per category in ``categories_`` order (NaN, when fit saw one,
    last), all zeros for a code fit never saw."""
    from sklearn.preprocessing import OneHotEncoder

    if (
        type(step) is not OneHotEncoder
        or step.sparse_output
        or step.handle_unknown != "ignore"
        or step.drop_idx_ is not None
        or getattr(step, "_infrequent_enabled", False)
        or step.dtype not in (np.float64, float)
    ):
        return None
    categories = []
    for cats in step.categories_:
        cats = np.asarray(cats)
        if cats.dtype.kind != "f":
            return None  # strings or objects: scikit-learn's own
        with_nan = bool(len(cats)) and bool(np.isnan(cats[-1]))
        categories.append((cats[:-1] if with_nan else cats, with_nan))

    def transform(rows: NDArray[np.float64]) -> NDArray[np.float64]:
        x = np.asarray(rows, dtype=np.float64)
        blocks: list[NDArray[Any]] = []
        for j, (known, with_nan) in enumerate(categories):
            column = x[:, j : j + 1]
            blocks.append(column == known)
            if with_nan:
                blocks.append(np.isnan(column))
        return np.hstack(blocks).astype(np.float64)

    return _light(transform)


def _nan_imputer(step: Any) -> Proba | None:
    """``SimpleImputer.transform`` for NaN as the missing value, in three numpy calls
    (scikit-learn's own validates its input for ~300 µs a call, whatever the rows):
    each NaN becomes its column's fitted statistic, columns that had no statistic in
    fit are dropped, and with ``add_indicator`` the missing-value flags of the columns
    that had missing values in fit follow, as 0.0 / 1.0."""
    from sklearn.impute import SimpleImputer

    if type(step) is not SimpleImputer or not _is_nan(step.missing_values):
        return None
    statistics = np.asarray(step.statistics_, dtype=np.float64)
    kept = np.flatnonzero(~np.isnan(statistics))
    all_kept = len(kept) == len(statistics)
    indicated = step.indicator_.features_ if step.add_indicator else None
    if indicated is not None and not isinstance(indicated, np.ndarray):
        return None  # features="all" and other settings: scikit-learn's own transform

    def transform(rows: NDArray[np.float64]) -> NDArray[np.float64]:
        x = np.asarray(rows, dtype=np.float64)
        missing = np.isnan(x)
        out = np.where(missing, statistics, x)
        if not all_kept:
            out = out[:, kept]
        if indicated is None:
            return out
        return np.hstack([out, missing[:, indicated]])

    return _light(transform)


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and value != value


def _fast(estimator: Any, native: bool) -> Proba | None:
    builders = (_random_forest, _hist_gradient_boosting, _pipeline)
    return _first(functools.partial(build, estimator, native and NATIVE) for build in builders)


def _first(builds: Iterable[Callable[[], Proba | None]]) -> Proba | None:
    """What the first of ``builds`` to give something gives; one that fails gives
    nothing (scikit-learn's internals moved: the caller keeps scikit-learn's method)."""
    for build in builds:
        try:
            fast = build()
        except (ImportError, AttributeError, KeyError, ValueError, TypeError):
            continue
        if fast is not None:
            return fast
    return None


def fast_proba(estimator: Any, native: bool = NATIVE) -> Proba | None:
    """The fast ``predict_proba`` of a supported tree classifier (or a Pipeline ending in
    one), else None; ``native`` False walks with numpy even where the C walk was built
    (tests compare both)."""
    from sklearn.base import is_classifier

    return _fast(estimator, native) if is_classifier(estimator) else None


def fast_predict(estimator: Any, native: bool = NATIVE) -> Proba | None:
    """The fast ``predict`` of a supported tree regressor (or a Pipeline ending in one),
    else None."""
    from sklearn.base import is_regressor

    return _fast(estimator, native) if is_regressor(estimator) else None


def checked_fast_proba(
    estimator: Any, n_features: int, example: NDArray[np.float64] | None
) -> Proba:
    """The fastest ``predict_proba`` that matches the estimator's own exactly."""
    return _checked(estimator.predict_proba, fast_proba(estimator), estimator, n_features, example)


def checked_fast_predict(
    estimator: Any, n_features: int, example: NDArray[np.float64] | None
) -> Proba:
    """The fastest ``predict`` of a regressor that matches the estimator's own exactly."""
    return _checked(estimator.predict, fast_predict(estimator), estimator, n_features, example)


def _checked(
    own: Proba,
    fast: Proba | None,
    estimator: Any,
    n_features: int,
    example: NDArray[np.float64] | None,
) -> Proba:
    """``fast`` where it gave exactly ``own``'s output on probe rows, else ``own``."""
    if fast is None:
        return own
    rng = np.random.default_rng(0)
    probe = rng.normal(size=(PROBE_ROWS, n_features)) * 3
    if example is not None and example.size:
        probe = np.vstack([example.reshape(-1, n_features), probe])
    with_nan = probe.copy()
    with_nan[rng.random(probe.shape) < 0.05] = np.nan  # the missing-value branches
    name = type(estimator).__name__
    try:
        agrees = all(_same(fast, own, rows) for rows in (probe, probe[:1], probe[-1:]))
    except Exception as exc:  # any surprise: the estimator's own method
        logger.warning("fast predict of %s failed on probe rows: %s", name, exc)
        return own
    if not agrees:
        logger.warning("fast predict of %s differs from its own; not used", name)
        return own
    try:
        nan_agrees = _same(fast, own, with_nan)
    except Exception:  # the estimator refuses NaN: so must serving, through it
        nan_agrees = False
    if not NATIVE:
        _warn_numpy_walk()
    row = row_of(fast)
    if row is not None and not _row_agrees(row, fast, probe):
        logger.warning("single-row predict of %s differs from its own; not used", name)
        del _ROWS[fast]
    if nan_agrees:
        return fast
    checked = fast

    def without_nan(rows: NDArray[np.float64]) -> NDArray[np.float64]:
        return own(rows) if np.isnan(rows).any() else checked(rows)

    return without_nan


@functools.cache
def _warn_numpy_walk() -> None:
    """Once per process: an operator should know the install lacked the C walk."""
    logger.warning(
        "mlbackend_serving._treewalk is not built (no C compiler at install): tree "
        "models walk with numpy, several times slower; reinstall with gcc to build it"
    )


def _row_agrees(row: Row, fast: Proba, probe: NDArray[np.float64]) -> bool:
    """``row`` gives bit for bit what ``fast`` gives each probe row as a matrix of one."""
    try:
        return all(
            array("d", row(array("d", values))).tobytes() == fast(values[None, :]).tobytes()
            for values in probe
        )
    except Exception:  # any surprise: the matrix path only
        return False


def _same(fast: Proba, own: Proba, rows: NDArray[np.float64]) -> bool:
    return bool(np.array_equal(fast(rows), np.asarray(own(rows), dtype=np.float64)))
