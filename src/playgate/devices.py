"""Devices: the signed device ids the server issues, and the readable names people recognise a device by."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from enum import StrEnum

from playgate.domain import random_hex

_KEY_LABEL = b"playgate device id key v1"
_PREFIX = "dv1"
# A device id as issued: dv1.<96 random bits, hex>.<first 128 bits of HMAC-SHA256(user id, random), hex>.
_ISSUED = re.compile(r"^dv1\.([0-9a-f]{24})\.([0-9a-f]{32})$")
# Its secret: HMAC-SHA256 of (user id, device id) under the same key, hex. The id is public (every listing of the
# account's streams shows it to the account's other devices); the secret is told once, to the device it is issued to.
_SECRET_LABEL = "device secret"  # noqa: S105 (a label mixed into the HMAC, not a secret)
MAX_NAME_CHARS = 80

# (pattern in the User-Agent, name), first match wins: Edge and Opera say "Chrome" too, Chrome says "Safari".
_BROWSERS = (
    (re.compile(r"Edg(e|A|iOS)?/"), "Edge"),
    (re.compile(r"OPR/|Opera"), "Opera"),
    (re.compile(r"Firefox/|FxiOS/"), "Firefox"),
    (re.compile(r"Chrome/|CriOS/|Chromium/"), "Chrome"),
    (re.compile(r"Safari/"), "Safari"),
    (re.compile(r"ExoPlayer", re.IGNORECASE), "ExoPlayer"),
    (re.compile(r"AppleCoreMedia|AVPlayer"), "AVPlayer"),
    (re.compile(r"^curl/"), "curl"),
)
_SYSTEMS = (
    (re.compile(r"iPhone"), "iPhone"),
    (re.compile(r"iPad"), "iPad"),
    (re.compile(r"Android"), "Android"),
    (re.compile(r"CrOS"), "ChromeOS"),
    (re.compile(r"Windows"), "Windows"),
    (re.compile(r"Mac OS X|Macintosh"), "macOS"),
    (re.compile(r"SMART-TV|SmartTV|Tizen|Web0S|webOS", re.IGNORECASE), "TV"),
    (re.compile(r"Linux|X11"), "Linux"),
)


class DeviceIdMode(StrEnum):
    """Which device ids a play request may carry."""

    any = "any"
    issued = "issued"


class DeviceIds:
    """Issues device ids bound to a user and signed with a key derived from the server's secret, each with a device
    secret that proves the id is used by the installation it was issued to, and checks both.

    Nothing is stored: id and secret are both derived from the key, so every process of a deployment checks them,
    and an idempotent retry is told the same secret again.
    """

    def __init__(self, secret: str, accepted: Sequence[str] = ()) -> None:
        # The HMAC state after each key, copied for each id or secret (a device is issued per request that names
        # none: the seed routes' requests all do). The first issues; the `accepted` ones (PLAYGATE_JWT_ACCEPTED_SECRETS)
        # still vouch for the ids they issued.
        self._keyed = [
            hmac.new(hmac.new(s.encode(), _KEY_LABEL, hashlib.sha256).digest(), digestmod=hashlib.sha256)
            for s in (secret, *accepted)
        ]

    @staticmethod
    def _mac(keyed: hmac.HMAC, message: str) -> str:
        mac = keyed.copy()
        mac.update(message.encode())
        return mac.hexdigest()

    def _signature(self, keyed: hmac.HMAC, user_id: str, nonce: str) -> str:
        return self._mac(keyed, f"{user_id}\x00{nonce}")[:32]

    def _issuer(self, user_id: str, device_id: str) -> hmac.HMAC | None:
        """The key that issued `device_id` to `user_id`, if one of this server's did."""
        found = _ISSUED.match(device_id)
        if found is None:
            return None
        for keyed in self._keyed:
            if hmac.compare_digest(found[2], self._signature(keyed, user_id, found[1])):
                return keyed
        return None

    def issue(self, user_id: str) -> str:
        """A fresh device id for one of `user_id`'s devices."""
        nonce = random_hex(12)
        return f"{_PREFIX}.{nonce}.{self._signature(self._keyed[0], user_id, nonce)}"

    def issued(self, user_id: str, device_id: str) -> bool:
        """True when this server issued `device_id` to `user_id` (under its key, or one it still accepts)."""
        return self._issuer(user_id, device_id) is not None

    def secret(self, user_id: str, device_id: str) -> str:
        """The device secret of an id issued to `user_id`: given only to the device the id was issued to."""
        return self._secret(self._issuer(user_id, device_id) or self._keyed[0], user_id, device_id)

    def _secret(self, keyed: hmac.HMAC, user_id: str, device_id: str) -> str:
        return self._mac(keyed, f"{_SECRET_LABEL}\x00{user_id}\x00{device_id}")

    def proven(self, user_id: str, device_id: str, secret: str | None) -> bool:
        """True when `device_id` was issued to `user_id` and `secret` is its device secret."""
        if secret is None:
            return False
        issuer = self._issuer(user_id, device_id)
        return issuer is not None and hmac.compare_digest(
            secret.encode(), self._secret(issuer, user_id, device_id).encode()
        )


def device_name(user_agent: str | None) -> str:
    """A name people recognise from a User-Agent ("Chrome on Linux"); "" when it tells nothing."""
    if not user_agent:
        return ""
    browser = next((name for pattern, name in _BROWSERS if pattern.search(user_agent)), None)
    system = next((name for pattern, name in _SYSTEMS if pattern.search(user_agent)), None)
    if browser and system:
        return f"{browser} on {system}"
    return browser or (f"A device on {system}" if system else "")


def clean_name(name: str) -> str:
    """A device name as kept: whitespace collapsed, at most MAX_NAME_CHARS characters."""
    return " ".join(name.split())[:MAX_NAME_CHARS]
