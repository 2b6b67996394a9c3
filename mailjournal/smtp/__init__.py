"""Sending by SMTP, shared by the delivery and relay stages: the client and what an attempt's
outcome means."""
