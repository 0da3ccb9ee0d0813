"""The one thing pyproject.toml cannot declare stably: our two C extensions.

``mlbackend_serving._treewalk`` walks tree ensembles for serving's fast path
(``mlbackend_serving/core/fastpath.py``); ``mlbackend_features._wire`` parses the usual
online read request (``mlbackend_features/transport/threaded.py``). They need Python's
headers and nothing else. Optional: without a C compiler the install still succeeds,
serving walks the trees with numpy and the feature store parses every request with
protobuf (CI requires both builds: tests/unit/test_serving_fastpath.py and
tests/unit/test_feature_wire.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "mlbackend_serving._treewalk",
            ["services/mlbackend_serving/_treewalk.c"],
            optional=True,
        ),
        Extension(
            "mlbackend_features._wire",
            ["services/mlbackend_features/_wire.c"],
            optional=True,
        ),
    ]
)
