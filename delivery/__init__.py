"""The delivery stage: journal copies to the journal addresses by SMTP, NDRs to the NDR
addresses, retries across restarts, dead letters, and the audit trail of outcomes.

Modules: :mod:`delivery.report` and :mod:`delivery.ndr` build messages (pure),
:mod:`mailjournal.smtp.outcomes` decides what an attempt means (pure), :mod:`delivery.retry` names
delivery's retry tiers, :mod:`mailjournal.smtp.client` talks to the smart host,
:mod:`delivery.handler` is delivery's work on the tiered consumer (:mod:`mailjournal.consumer`,
which runs the Kafka side), :mod:`delivery.main` (``mailjournal deliver``) and
:mod:`delivery.dlq` (``mailjournal dlq``) are the commands.
"""
