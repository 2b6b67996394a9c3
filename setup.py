"""The one native part: ingest's DATA scan (``ingest/_datascan.c``). Everything else about the
package is in ``pyproject.toml``; this file exists because declaring extension modules there is
still experimental in setuptools (a warning on every install)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("ingest._datascan", sources=["ingest/_datascan.c"], extra_compile_args=["-O2"])
    ]
)
