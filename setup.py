"""The one C extension, llama.cpp's tensor hash (quorum_tui/engine/_fnv.c); the rest of the
package is described in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "quorum_tui.engine._fnv", ["quorum_tui/engine/_fnv.c"], extra_compile_args=["-O3"]
        )
    ]
)
