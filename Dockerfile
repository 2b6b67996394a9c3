# One image for every stage; the stage is the command. The wheels (the project's and its
# dependencies') are built on the host first, so the image build needs no package index:
#   make wheels && docker build -t mailjournal .       (or: make image, with buildah)
#   docker run --read-only mailjournal ingest --config /etc/mailjournal/mailjournal.toml
# BASE is any Debian-like image with python3 (>= 3.11, with venv) and ca-certificates: the official
# Python image by default; `make image` builds FROM a local mmdebstrap'd Debian (docs/operations.md).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ARG WHEELS=build/wheels
# The wheels are bind-mounted, not copied: nothing of them stays in a layer. The venv isolates
# the project from the base's Python packages; pip's compiled bytecode is written here, at build
# time, so a read-only root file system has nothing to write at run time.
RUN --mount=type=bind,source=${WHEELS},target=/wheels \
    python3 -m venv /opt/mailjournal \
    && /opt/mailjournal/bin/pip install --quiet --no-cache-dir --no-index --find-links=/wheels \
       --disable-pip-version-check mailjournal \
    && /opt/mailjournal/bin/mailjournal --help >/dev/null \
    && useradd --uid 10001 --user-group --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin mailjournal

# Non-root; every write a stage makes goes to a mounted volume (or /tmp), never the image.
USER 10001:10001
ENV PATH=/opt/mailjournal/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_INDEX=1
WORKDIR /tmp
# SMTP (ingest), metrics: ingest, journal, delivery, audit, relay
EXPOSE 2525 9101 9102 9103 9104 9105
ENTRYPOINT ["/opt/mailjournal/bin/mailjournal"]
CMD ["--help"]
