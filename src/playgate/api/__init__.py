"""The HTTP and Socket.IO surface of PlayGate."""
