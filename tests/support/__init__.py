"""Test helpers: real PlayGate processes, HTTP clients with tokens, Socket.IO clients that record events."""
