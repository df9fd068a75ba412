"""Artifact stores: the protocol (:mod:`.base`) and its backends."""
