"""SMTP ingest: the front door of mailjournal.

An SMTP server (its own ``asyncio.Protocol`` state machine, :mod:`ingest.connection`) that
enforces SMTP policy, parses DATA as it arrives, and publishes one
``MessageReceived`` event per accepted message to Kafka, answering ``250`` only after the event is
acknowledged by the broker (``acks=all``, idempotent producer).
"""
