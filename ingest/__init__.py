"""SMTP ingest: the front door of mailjournal.

An aiosmtpd-based SMTP server that enforces SMTP policy, reads DATA in bulk, and publishes one
``MessageReceived`` event per accepted message to Kafka, answering ``250`` only after the event is
acknowledged by the broker (``acks=all``, idempotent producer).
"""
