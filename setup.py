"""The native parts: ingest's DATA scan (``ingest/_datascan.c``), the long-line check of the
shared wire form (``mailjournal/smtp/_lines.c``) and the Avro codec of the events
(``schemas/_avro.c``). Everything else about the package is in
``pyproject.toml``; this file exists because declaring extension modules there is still
experimental in setuptools (a warning on every install)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("ingest._datascan", sources=["ingest/_datascan.c"], extra_compile_args=["-O2"]),
        Extension("schemas._avro", sources=["schemas/_avro.c"], extra_compile_args=["-O2"]),
        Extension(
            "mailjournal.smtp._lines",
            sources=["mailjournal/smtp/_lines.c"],
            extra_compile_args=["-O2"],
        ),
    ]
)
