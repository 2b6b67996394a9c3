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
