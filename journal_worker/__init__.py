"""The journal worker stage: decides which journal copies each accepted message owes and emits
them exactly once (``mailjournal journal --config FILE``).

:mod:`journal_worker.decide` holds the pure decision logic, :mod:`journal_worker.lookups` the
per-recipient directory lookups (backends in :mod:`mailjournal.directory`), :mod:`journal_worker.worker` the transactional Kafka loop.
"""
