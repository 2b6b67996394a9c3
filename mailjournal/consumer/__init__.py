"""The tiered consumer: one mechanism for the stages that take records off an input topic and
its retry tiers and produce what follows from each (delivery, relay).

:mod:`~mailjournal.consumer.loop` runs it; a stage implements the
:class:`~mailjournal.consumer.handler.Handler` protocol. :mod:`~mailjournal.consumer.fetch` and
:mod:`~mailjournal.consumer.lag` serve every consuming loop (the journal worker's too).
"""
