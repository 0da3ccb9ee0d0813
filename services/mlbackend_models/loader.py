"""Load model artifacts without running code an attacker wrote.

skops artifacts load with skops' trusted types only. Two scikit-learn internals that
skops does not trust — ``sklearn.tree._tree.Tree`` and HistGradientBoosting's
``TreePredictor`` — are trusted here only *after* every instance in the loaded object
has been validated (see :mod:`mlbackend_models.trees`): their node arrays are walked
at ``predict`` without bounds checks, so a crafted file could read out of bounds.
Any other type skops does not trust needs the operator's allow-list, and pickle/joblib
artifacts are refused unless the operator allowed pickle. The artifact's sha256 is
verified on the very bytes that are then loaded.
"""

from __future__ import annotations

import enum
import hashlib
import io
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import skops.io as sio

from mlbackend_models.trees import TREE_TYPES, validate_trees
from mlbackend_runtime.errors import FailedPrecondition, InvalidInput

# Private scikit-learn helpers skops 0.16 does not list although they are plain Python
# holders of estimators and arrays (no unchecked indexing in native code): reviewed,
# so a CalibratedClassifierCV loads without an operator allow-list.
#
# ``numpy.dtype``: what SimpleImputer keeps as ``_fit_dtype``/``_fill_dtype`` (so every
# pipeline with an imputer reports it; measured for the training allow-list: this is the
# only type besides the validated trees that random_forest, decision_tree,
# logistic_regression and the OneHotEncoder/ColumnTransformer pipelines report). skops 0.16
# stores a dtype as an *empty ndarray* of that dtype and its DTypeNode constructs it as
# ``child.construct().dtype``: the child is an ordinary node whose own type is audited
# separately (an ndarray is read with ``np.load(allow_pickle=False)``, which refuses
# object dtypes), so trusting the node adds only an attribute read on an object that was
# itself trusted — a dtype is a description of data, it holds no code. A file that claims
# ``numpy.dtype`` under another loader would build ``np.dtype.__new__(np.dtype)``, which
# fails without arguments: refused, nothing runs.
REVIEWED_TYPES = frozenset(
    {
        "sklearn.calibration._CalibratedClassifier",
        "sklearn.calibration._SigmoidCalibration",
        "numpy.dtype",
    }
)


class ArtifactFormat(enum.Enum):
    SKOPS = "skops"
    PICKLE = "pickle"

    @classmethod
    def for_path(cls, path: Path) -> ArtifactFormat:
        """The format a file name implies (``.skops``; ``.pkl``/``.pickle``/``.joblib``)."""
        if path.suffix in {".pkl", ".pickle", ".joblib"}:
            return cls.PICKLE
        return cls.SKOPS


class ArtifactRejected(InvalidInput):
    """The artifact is unsafe or corrupt; the message names the type and the defect."""


@dataclass(frozen=True)
class LoadPolicy:
    """What the operator allows beyond skops' own trusted types."""

    allow_pickle: bool = False
    trusted_types: frozenset[str] = field(default_factory=frozenset)
    """Extra fully qualified type names to trust (the operator's allow-list)."""


DEFAULT_POLICY = LoadPolicy()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_artifact(
    path: Path,
    *,
    expected_sha256: str | None,
    artifact_format: ArtifactFormat | None = None,
    policy: LoadPolicy = DEFAULT_POLICY,
) -> Any:
    """Read, verify and load one artifact; return the validated model object.

    ``expected_sha256`` None skips the digest check (only for callers that verified the
    bytes themselves); a mismatch is refused before anything is deserialized.
    """
    data = path.read_bytes()
    return load_artifact_bytes(
        data,
        expected_sha256=expected_sha256,
        artifact_format=artifact_format or ArtifactFormat.for_path(path),
        policy=policy,
        name=str(path),
    )


def load_artifact_bytes(
    data: bytes,
    *,
    expected_sha256: str | None,
    artifact_format: ArtifactFormat = ArtifactFormat.SKOPS,
    policy: LoadPolicy = DEFAULT_POLICY,
    name: str = "artifact",
) -> Any:
    if expected_sha256 is not None:
        actual = sha256_hex(data)
        if actual != expected_sha256.lower():
            raise ArtifactRejected.field(
                "sha256", f"{name}: sha256 {actual} does not match the expected {expected_sha256}"
            )
    if artifact_format is ArtifactFormat.PICKLE:
        model = _load_pickle(data, policy, name)
    else:
        model = _load_skops(data, policy, name)
    # Trees are validated whatever the format: a pickle may be trusted, but not corrupt.
    validate_trees(model)
    return model


def _load_skops(data: bytes, policy: LoadPolicy, name: str) -> Any:
    try:
        untrusted: list[str] = sio.get_untrusted_types(data=data)
    except Exception as exc:  # a zip/JSON that skops cannot even parse
        raise ArtifactRejected.field("artifact", f"{name}: not a skops file ({exc})") from None
    refused = _refused_types(untrusted, policy.trusted_types)
    if refused:
        raise ArtifactRejected.field(
            "artifact",
            f"{name}: untrusted types {', '.join(sorted(refused))}; "
            "add them to the operator's trusted types only if you trust their source",
        )
    try:
        # The tree types are trusted for loading only; validate_trees runs before return.
        return sio.loads(data, trusted=list(untrusted))
    except Exception as exc:
        raise ArtifactRejected.field("artifact", f"{name}: cannot be loaded: {exc}") from None


def _refused_types(untrusted: Collection[str], allowed: Collection[str]) -> set[str]:
    acceptable = TREE_TYPES | REVIEWED_TYPES | set(allowed)
    return {t for t in untrusted if t not in acceptable}


def _load_pickle(data: bytes, policy: LoadPolicy, name: str) -> Any:
    if not policy.allow_pickle:
        raise FailedPrecondition(
            f"{name}: pickle/joblib artifacts run arbitrary code when loaded and are "
            "refused; save the model with skops, or let the operator allow pickle"
        )
    import joblib

    return joblib.load(io.BytesIO(data))
