"""The relay stage (inline mode): originals from the messages topic onward to their next hops,
with its own retry tiers and delivery status notifications to senders."""
