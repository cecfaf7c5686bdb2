"""Builds the optional C heap engine; all other metadata lives in pyproject.toml."""

import os

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "leakyspanner.capture._heap",
            ["leakyspanner/capture/_heap.c"],
            # optional: without a compiler the install still succeeds and heap.py reports why
            optional=True,
            extra_compile_args=["-O2"],
            libraries=["m"] if os.name == "posix" else [],
        ),
        Extension(
            "leakyspanner.capture._reqpath",
            ["leakyspanner/capture/_reqpath.c"],
            # optional: without it the middleware keeps its pure-Python request path
            optional=True,
            extra_compile_args=["-O2"],
            libraries=["m"] if os.name == "posix" else [],
        ),
    ]
)
