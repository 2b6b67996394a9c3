"""MX lookups are the core's (:mod:`mailjournal.smtp.mx`): delivery routes use them too."""

from mailjournal.smtp.mx import MxError, Resolver, mx_hosts

__all__ = ["MxError", "Resolver", "mx_hosts"]
