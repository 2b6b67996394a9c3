"""Shared core of mailjournal: configuration, Kafka plumbing, metrics, logging and the CLI."""

__version__ = "0.1.0"
