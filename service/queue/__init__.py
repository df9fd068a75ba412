"""Job queues: the protocol (:mod:`.base`) and its backends."""
