"""Helpers shared by every test package (not fixtures): images, jobs, servers, waiting.

Import them as ``from tests.helpers.images import data_uri`` (pytest puts the repository root on
``sys.path``; see ``pythonpath`` in pyproject.toml).
"""
