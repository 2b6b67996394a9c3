"""The relay stage (inline mode): originals from the messages topic onward to their next hops,
with its own retry tiers and delivery status notifications to senders.

Modules: :mod:`relay.routing` (which next hop, the envelope; pure), :mod:`relay.mx` (MX
lookups), :mod:`relay.sender` (SMTP to the next hops), :mod:`relay.sender_dsn` (DSNs to senders;
pure), :mod:`relay.retry` (the relay's tiers and settings), :mod:`relay.handler` (the relay's
work on the tiered consumer, :mod:`mailjournal.consumer`), :mod:`relay.metrics`, and
:mod:`relay.main` (``mailjournal relay``).
"""
