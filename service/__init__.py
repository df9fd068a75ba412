"""flux2-edit service layer: settings, errors, CLI and (later) the fal-compatible HTTP API.

Nothing in this package imports torch, diffusers or transformers at module level; the engine is
reached through :mod:`pipelines` and loaded lazily by the commands that need a model.
"""
