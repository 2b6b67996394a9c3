"""Shared test fixtures live in tests/fixtures/<part>.py, one module per real part (Kafka, SMTP,
slapd, ...), and are registered here so every test module can use them."""

pytest_plugins = [
    "tests.fixtures.config",
    "tests.fixtures.kafka",
    "tests.fixtures.smtp",
    "tests.fixtures.ldap",
    "tests.fixtures.ingest",
    "tests.fixtures.journal",
    "tests.fixtures.delivery",
    "tests.fixtures.pipeline",
    "tests.fixtures.faults",
    "tests.fixtures.postfix",
]

import os  # noqa: E402

from hypothesis import settings  # noqa: E402

# CI (.ci/run) replays the same examples every run: main stays green or red for a reason, not a
# seed; `make test` elsewhere explores new ones (and keeps failures in .hypothesis/ to replay)
# No per-example deadline in either: on a loaded 2-core machine a slow example is load, not a
# bug (speed is the benchmarks' business), and a deadline made a property test fail by chance
settings.register_profile("ci", derandomize=True, database=None, print_blob=True, deadline=None)
settings.register_profile("local", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "local"))
