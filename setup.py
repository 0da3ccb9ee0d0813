"""The one thing pyproject.toml cannot declare stably: our three C extensions.

``mlbackend_serving._treewalk`` walks tree ensembles for serving's fast path
(``mlbackend_serving/core/fastpath.py``); ``mlbackend_serving._oipwire`` parses the
usual ModelInfer request (``mlbackend_serving/transport/wire.py``) and
``mlbackend_features._wire`` the usual online read request
(``mlbackend_features/transport/threaded.py``); the two parsers share
``native/protowire.h``. They need Python's headers and nothing else.
Optional: without a C compiler the install still succeeds, serving walks the trees with
numpy and both services parse every request with protobuf (CI requires every build:
tests/unit/test_serving_fastpath.py, test_oip_wire.py and test_feature_wire.py).
"""

from setuptools import Extension, setup

PROTOWIRE = ["native/protowire.h"]

setup(
    ext_modules=[
        Extension(
            "mlbackend_serving._treewalk",
            ["services/mlbackend_serving/_treewalk.c"],
            optional=True,
        ),
        Extension(
            "mlbackend_serving._oipwire",
            ["services/mlbackend_serving/_oipwire.c"],
            include_dirs=["native"],
            depends=PROTOWIRE,
            optional=True,
        ),
        Extension(
            "mlbackend_features._wire",
            ["services/mlbackend_features/_wire.c"],
            include_dirs=["native"],
            depends=PROTOWIRE,
            optional=True,
        ),
    ]
)
