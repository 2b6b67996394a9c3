"""Tools for one machine and for development: a local Kafka, the all-in-one supervisor
(``mailjournal run``), a capture server and a test sender. No stage imports them."""
