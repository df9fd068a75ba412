"""Checkpoints: the manifest of the real FLUX.2 weights, download/verify and the tiny builder."""
