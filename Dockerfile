# One image for every stage; the stage is the command:
#   docker build -t mailjournal .
#   docker run mailjournal ingest --config /etc/mailjournal/mailjournal.toml
# Build stage: wheels for the project and its dependencies (compilers stay here).
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY mailjournal ./mailjournal
COPY ingest ./ingest
COPY journal_worker ./journal_worker
COPY delivery ./delivery
COPY relay ./relay
COPY audit ./audit
COPY devtools ./devtools
COPY schemas ./schemas
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Final stage: the wheels only, a non-root user, nothing to build with.
FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin mailjournal
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels mailjournal \
    && rm -rf /wheels
USER 10001
ENV PYTHONUNBUFFERED=1
EXPOSE 2525 9101 9102 9103 9104
ENTRYPOINT ["mailjournal"]
CMD ["--help"]
