"""`playgate bench`: load generator, admission micro-benchmark and idle-socket check for PlayGate."""
