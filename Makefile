# mailjournal: `make run` runs the whole pipeline on one machine, `make test` passes the suite.
# Both install what they need first: a Python venv, Debian packages, the Kafka jars (Maven).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config/mailjournal.example.toml
RUN_DIR ?= var
PYTEST_ARGS ?=

.PHONY: help install build-deps sysdeps bench-sysdeps kafka-jars kustomize wheels image image-base run test lint format fuzz fuzz-codec bench bench-quick bench-paced clean

help:
	@echo "make run    - install and run the whole pipeline on this machine (Ctrl-C stops it)"
	@echo "make test   - install and run the whole test suite (real Kafka, SMTP, slapd, Prometheus)"
	@echo "make image  - the container image (buildah; IMAGE_BASE=python:3.11-slim-bookworm for the official base)"
	@echo "make lint   - ruff and mypy"
	@echo "make fuzz   - the coverage-guided fuzzer over decide + build, FUZZ_SECONDS (default 60)"
	@echo "make fuzz-codec - the native Avro decoder against fastavro, differential, FUZZ_SECONDS"
	@echo "make bench  - benchmarks against Postfix and smtp-sink"

# apt-get install of the packages $(1), as root or through sudo, with no standard input; the
# debconf answers keep postfix and slapd from asking or configuring themselves when pulled in
APT_INSTALL = echo "installing Debian packages: $(1)"; \
	SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	echo "postfix postfix/main_mailer_type select No configuration" | $$SUDO debconf-set-selections; \
	echo "slapd slapd/no_configuration boolean true" | $$SUDO debconf-set-selections; \
	$$SUDO apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(1) </dev/null >/dev/null \
	|| { echo "apt-get install failed for: $(1)" >&2; exit 1; }

$(BIN)/mailjournal: pyproject.toml setup.py ingest/_datascan.c mailjournal/smtp/_lines.c schemas/_avro.c | build-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/mailjournal

# a C compiler and the Python headers, for the native parts (see setup.py);
# installed only when missing (a pyenv or python.org Python brings its own headers)
build-deps:
	@if ! command -v cc >/dev/null 2>&1 || ! $(PYTHON) -c 'import os, sys, sysconfig; \
	  sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then \
	  $(call APT_INSTALL,gcc libc6-dev python3-dev); \
	fi

# Debian packages: Java + Maven (Kafka from Maven Central), Postfix (smtp-source/smtp-sink and the
# peer in benchmarks), swaks, OpenLDAP slapd, Prometheus (promtool), buildah and mmdebstrap (make
# image), HAProxy (ingest behind a balancer in tests). Installed only when missing.
SYSDEPS := java:openjdk-17-jre-headless mvn:maven /usr/sbin/smtp-sink:postfix swaks:swaks \
	/usr/sbin/slapd:slapd ldapadd:ldap-utils promtool:prometheus openssl:openssl \
	buildah:buildah mmdebstrap:mmdebstrap /usr/sbin/haproxy:haproxy
sysdeps:
	@missing=""; for pair in $(SYSDEPS); do cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || [ -x "$$cmd" ] || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then $(call APT_INSTALL,$${missing# }); fi

kafka-jars: install
	$(BIN)/mailjournal kafka-local fetch

# kustomize, which tests/test_deploy_kubernetes.py builds the manifests with, built from the Go
# module proxy into .tools/ (Debian has no package of it). v5.8.2 is the newest release whose
# go.mod a Go 1.26 takes (v5.8.3 needs 1.27); Debian 12's golang-go (1.19) is too old to build
# it, so the Go of this machine kind (/usr/local/go) is used, and its absence is an error.
KUSTOMIZE_VERSION := v5.8.2
KUSTOMIZE := $(CURDIR)/.tools/bin/kustomize
GO ?= $(firstword $(shell command -v go) $(wildcard /usr/local/go/bin/go))
kustomize:
	@[ "$$($(KUSTOMIZE) version 2>/dev/null)" = "$(KUSTOMIZE_VERSION)" ] || { \
	  [ -n "$(GO)" ] || { echo "building kustomize needs Go >= 1.26 (go on PATH or /usr/local/go)" >&2; exit 1; }; \
	  echo "building kustomize $(KUSTOMIZE_VERSION) into .tools/bin"; \
	  GOBIN=$(CURDIR)/.tools/bin nice -n 19 $(GO) install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION); }

# The container image (Dockerfile): the wheels built here on the host (pip's own settings and
# cache), the image built with buildah (no daemon; vfs storage and chroot isolation work in any
# container or VM) FROM IMAGE_BASE. By default that is a minimal Debian made locally with
# mmdebstrap (Debian packages only, cached as a tarball under ~/.cache/mailjournal), since an
# image registry may not be reachable; IMAGE_BASE=python:3.11-slim-bookworm builds on the
# official Python image (the Dockerfile's own default, what `docker build .` uses).
# SOURCE_DATE_EPOCH makes the wheels byte-for-byte reproducible, so an unchanged tree (same
# wheels, same Dockerfile, same base) keeps the image it has: a warm `make image` is quick.
IMAGE ?= localhost/mailjournal:dev
LOCAL_BASE := localhost/mailjournal-base:bookworm
IMAGE_BASE ?= $(LOCAL_BASE)
CACHE_DIR ?= $(HOME)/.cache/mailjournal
BASE_TAR := $(CACHE_DIR)/base-bookworm.tar
BUILDAH := buildah --storage-driver vfs
PACKAGES := mailjournal schemas ingest journal_worker delivery relay audit devtools
WHEEL_SOURCES := pyproject.toml setup.py README.md $(shell find $(PACKAGES) -type f -not -path '*/__pycache__/*' 2>/dev/null)
build/wheels/.built: $(BIN)/mailjournal $(WHEEL_SOURCES)
	rm -rf build/wheels
	SOURCE_DATE_EPOCH=315532800 $(BIN)/pip wheel -q --disable-pip-version-check --wheel-dir build/wheels .
	touch $@
wheels: build/wheels/.built

image-base: sysdeps
	@$(BUILDAH) inspect --type image $(LOCAL_BASE) >/dev/null 2>&1 || { set -e; \
	  if [ ! -s $(BASE_TAR) ]; then mkdir -p $(CACHE_DIR); echo "mmdebstrap: $(BASE_TAR)"; \
	    nice mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
	      bookworm $(BASE_TAR).part; mv $(BASE_TAR).part $(BASE_TAR); fi; \
	  ctr=$$($(BUILDAH) from scratch); $(BUILDAH) add --quiet $$ctr $(BASE_TAR) / >/dev/null; \
	  $(BUILDAH) config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
	    --cmd /bin/bash $$ctr; \
	  $(BUILDAH) commit --quiet --rm $$ctr $(LOCAL_BASE) >/dev/null; echo "base image $(LOCAL_BASE)"; }

image: wheels $(if $(filter $(LOCAL_BASE),$(IMAGE_BASE)),image-base,sysdeps)
	@set -e; base=$$($(BUILDAH) inspect --type image --format '{{.FromImageID}}' $(IMAGE_BASE) 2>/dev/null || echo $(IMAGE_BASE)); \
	inputs=$$(cat Dockerfile .dockerignore build/wheels/*.whl | sha256sum | cut -c1-32)-$$base; \
	have=$$($(BUILDAH) inspect --type image --format '{{index .ImageAnnotations "org.mailjournal.inputs"}}' $(IMAGE) 2>/dev/null || true); \
	if [ "$$have" = "$$inputs" ]; then echo "$(IMAGE) is up to date"; exit 0; fi; \
	old=$$($(BUILDAH) inspect --type image --format '{{.FromImageID}}' $(IMAGE) 2>/dev/null || true); \
	nice $(BUILDAH) build --quiet --isolation chroot --pull=$(if $(filter $(LOCAL_BASE),$(IMAGE_BASE)),never,missing) --build-arg BASE=$(IMAGE_BASE) \
	  --annotation org.mailjournal.inputs=$$inputs -t $(IMAGE) . >/dev/null; \
	[ -z "$$old" ] || $(BUILDAH) rmi $$old >/dev/null 2>&1 || true; \
	echo "built $(IMAGE) FROM $(IMAGE_BASE)"

# the run prints its banner and one line per stage when it is ready; the stages log at
# LOG_LEVEL (make run LOG_LEVEL=INFO shows their start-up, assignments and listeners)
LOG_LEVEL ?= WARNING
run: install sysdeps kafka-jars
	MAILJOURNAL_JOURNAL__STAMP_SECRET_FILE=$(abspath $(RUN_DIR))/stamp.key \
	MAILJOURNAL_LOGGING__LEVEL=$(LOG_LEVEL) \
	$(BIN)/mailjournal run --config $(CONFIG) --local-kafka $(RUN_DIR)/kafka-local --capture $(RUN_DIR)/maildir

test: install sysdeps kafka-jars kustomize
	$(BIN)/ruff check .
	$(BIN)/mypy mailjournal schemas ingest journal_worker delivery relay evidence audit devtools bench
	@set +e; $(BIN)/pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure here" >&2; exit 1; fi; \
	exit $$rc

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy mailjournal schemas ingest journal_worker delivery relay evidence audit devtools bench

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# New inputs the fuzzer finds go to $(RUN_DIR)/fuzz/corpus, crashes to $(RUN_DIR)/fuzz/crash-*;
# tests/fuzz/corpus (committed, replayed by make test) is read as seeds only.
FUZZ_SECONDS ?= 60
FUZZ_MAX_LEN ?= 8192
FUZZ_ARGS ?=
fuzz: install
	@mkdir -p $(RUN_DIR)/fuzz/corpus
	$(BIN)/python -m tests.fuzz.fuzz_pipeline $(RUN_DIR)/fuzz/corpus tests/fuzz/corpus \
	  -max_total_time=$(FUZZ_SECONDS) -max_len=$(FUZZ_MAX_LEN) -timeout=30 -rss_limit_mb=4096 \
	  -artifact_prefix=$(RUN_DIR)/fuzz/ -print_final_stats=1 $(FUZZ_ARGS)

# the native Avro decoder against fastavro, differential (tests/fuzz/fuzz_codec.py)
fuzz-codec: install
	@mkdir -p $(RUN_DIR)/fuzz-codec
	$(BIN)/python -m tests.fuzz.fuzz_codec $(RUN_DIR)/fuzz-codec \
	  -max_total_time=$(FUZZ_SECONDS) -max_len=4096 -timeout=30 -rss_limit_mb=4096 \
	  -artifact_prefix=$(RUN_DIR)/fuzz-codec/ -print_final_stats=1 $(FUZZ_ARGS)

# the bench reads the broker's request metrics through the JVM attach API (bench/kafka_requests.py):
# that needs a JDK, not only the JRE the tests use
bench-sysdeps: sysdeps
	@command -v javac >/dev/null 2>&1 || { $(call APT_INSTALL,openjdk-17-jdk-headless); }

# issue 17's run: journal + relay against Postfix, and the Kafka floor of both copy forms
BENCH_ARGS ?= --seconds 15 --sizes 1024,102400,1048576 --relay --floor

bench: install bench-sysdeps kafka-jars
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python -m bench.run_all $(BENCH_ARGS)
	$(BIN)/python -m bench.bench_evidence

bench-quick: install bench-sysdeps kafka-jars
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python -m bench.run_all --quick

bench-paced: install bench-sysdeps kafka-jars
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python -m bench.paced

clean:
	-$(BIN)/mailjournal kafka-local down --dir $(RUN_DIR)/kafka-local
	rm -rf var .pytest_cache .ruff_cache .mypy_cache
