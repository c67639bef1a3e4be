"""Request queues and decision fan-outs: in-process (embedded) and, in distributed mode, on Redis."""
