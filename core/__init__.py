"""The bottom layer of flux2-edit: what every other package shares (errors, plain types).

Layers only point down: ``service`` → ``pipelines`` → ``weights`` → ``core``. Nothing here
imports another flux2-edit package (``make lint`` checks it with import-linter).
"""
