"""The delivery stage: journal copies to the journal addresses by SMTP, NDRs to the NDR
addresses, retries across restarts, dead letters, and the audit trail of outcomes.

Modules: :mod:`delivery.report` and :mod:`delivery.ndr` build messages (pure),
:mod:`mailjournal.smtp.outcomes` and :mod:`delivery.retry` decide what an attempt means (pure),
:mod:`mailjournal.smtp.client` talks to the smart host, :mod:`delivery.worker` runs the Kafka side,
:mod:`delivery.main` (``mailjournal deliver``) and :mod:`delivery.dlq` (``mailjournal dlq``) are
the commands.
"""
