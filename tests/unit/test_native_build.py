"""setup.py builds the C extensions optionally, so an install without a compiler still
works on their Python fallbacks; CI must not pass on those fallbacks by accident."""

from __future__ import annotations

import os

import pytest

from mlbackend_features.transport import threaded as features_front
from mlbackend_serving.core import fastpath
from mlbackend_serving.transport import wire

BUILT = {
    "mlbackend_features._wire (online-read parser)": features_front.NATIVE,
    "mlbackend_serving._oipwire (ModelInfer parser)": wire.NATIVE,
    "mlbackend_serving._treewalk (tree walk)": fastpath.NATIVE,
}


@pytest.mark.parametrize("extension", sorted(BUILT))
def test_every_c_extension_is_built_in_ci(extension: str) -> None:
    if os.environ.get("CI") != "true":
        pytest.skip("only CI requires the C build")
    assert BUILT[extension], f"{extension} was not built"
