"""Thin routers, one per concern; the logic they share is in :mod:`service.submission`."""
