"""The one thing pyproject.toml cannot declare stably: serving's C extension.

``mlbackend_serving._treewalk`` walks tree ensembles for serving's fast path
(``mlbackend_serving/core/fastpath.py``); it needs Python's headers and nothing else.
Optional: without a C compiler the install still succeeds and serving walks the trees
with numpy instead (CI requires the C build: tests/unit/test_serving_fastpath.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "mlbackend_serving._treewalk",
            ["services/mlbackend_serving/_treewalk.c"],
            optional=True,
        )
    ]
)
