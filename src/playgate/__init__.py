"""PlayGate: decides whether a user may start one more video stream, and tells the player in real time."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("playgate")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
