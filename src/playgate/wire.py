"""What the wire shapes share with the modules below the API (the catalogue import, the fan-out): the camelCase
base, the bounded field types, times as ISO-8601 and a plan's rules as fields."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict, StringConstraints
from pydantic.alias_generators import to_camel

from playgate.domain import ID_PATTERN, MAX_ID_LEN, OutagePolicy, Policy, Rules
from playgate.policy import rules_from_json, rules_to_json

# Ids, names and keys: printable, no control characters, bounded.
Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LEN, pattern=ID_PATTERN)]
# A stream id may carry its user's id (the Redis ledger's do, hex-encoded: up to 2 x 64 + 25 characters).
MAX_STREAM_ID_LEN = 160
StreamId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STREAM_ID_LEN, pattern=ID_PATTERN)]
# A request id names its user as a stream id does (domain.owned_id): as long.
RequestId = StreamId
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
Text = Annotated[str, StringConstraints(min_length=1, max_length=500, pattern=r"^[^\x00-\x1f\x7f]+$")]


# A video URL a player may be sent to: http(s), or a path on this server (the media folder); never `javascript:`,
# `data:` and the like. The OpenAPI document carries it as the field's pattern; _playable words the refusal.
PLAYABLE_PATTERN = r"^(/([^/\x00-\x20\x7f][^\x00-\x20\x7f]*)?|[Hh][Tt][Tt][Pp][Ss]?://[^\x00-\x20\x7f]+)$"
_PLAYABLE = re.compile(PLAYABLE_PATTERN)


def _playable(url: str) -> str:
    """`url` if PLAYABLE_PATTERN takes it; else ValueError saying what is wrong."""
    if re.search(r"[\x00-\x20\x7f]", url):
        raise ValueError("a video URL has no spaces or control characters (write a space as %20)")
    if _PLAYABLE.fullmatch(url) is None:
        raise ValueError("a video URL is http(s)://… or a path on this server such as /media/clip.mp4")
    return url


VideoUrl = Annotated[
    str,
    StringConstraints(min_length=1, max_length=2000),
    AfterValidator(_playable),
    Field(json_schema_extra={"pattern": PLAYABLE_PATTERN}),
]
Password = Annotated[str, StringConstraints(min_length=1, max_length=200)]
DeviceId = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
# A body's numbers and flags are JSON's own: `true` is no limit of 1, nor "3" a limit, nor 0 a flag (pydantic's lax
# mode would take them, against the schema the OpenAPI document shows). The CSV import spells its cells as JSON first.
Limit = Annotated[int, Strict(), Field(ge=0, le=10_000)]
Flag = Annotated[bool, Strict()]
DeviceSecret = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")]
DeviceName = Annotated[str, StringConstraints(min_length=1, max_length=80, pattern=r"^[^\x00-\x1f\x7f]+$")]
KindTag = Annotated[str, StringConstraints(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9._-]+$")]
Kinds = Annotated[list[KindTag], Field(max_length=20, description="Kind tags, such as `live`, `vod`, `uhd`.")]
Network = Annotated[str, StringConstraints(min_length=1, max_length=50, pattern=r"^[0-9A-Fa-f.:/]+$")]
Networks = Annotated[
    list[Network],
    Field(max_length=20, description="The household's networks in CIDR form (`203.0.113.0/24`); [] for none."),
]


def _not_a_number(value: object) -> object:
    """A time is ISO-8601 text: pydantic would read "0.5" or "1700000000" as seconds since the epoch."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
        raise ValueError("an ISO-8601 time such as 2026-12-01T00:00:00Z, not a number")
    return value


Instant = Annotated[datetime, BeforeValidator(_not_a_number)]


def iso(epoch_s: float) -> str:
    """Epoch seconds as ISO-8601 UTC with milliseconds and a Z."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Wire(BaseModel):
    """Base of every body: camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True)


class Input(Wire):
    """Base of request bodies: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class RulesWire(Wire):
    """The rules of a plan beside its total: absent or null is no such cap."""

    on_limit: Policy | None = Field(
        None,
        description="At the total limit: `deny` the new request, `evict_oldest` (end the oldest stream), or "
        "`evict_oldest_on_same_device_first` (the oldest on the asking device, else the oldest). Under an "
        "eviction policy a kind, title or household cap evicts the oldest stream it counts as well. "
        "null: the deployment's PLAYGATE_POLICY.",
    )
    kinds: dict[KindTag, Limit] | None = Field(
        None, description='Caps per kind tag inside the total, such as `{"uhd": 1, "live": 2}`.'
    )
    max_per_title: Limit | None = Field(None, description="Streams of one video at a time.")
    max_devices: Limit | None = Field(
        None, description="Distinct devices that started a stream within deviceWindowDays; a new one is denied."
    )
    device_window_days: Annotated[float, Strict(), Field(gt=0, le=3650)] | None = Field(
        None, description="How long a device stays registered after its last stream start (default 30)."
    )
    max_away_streams: Limit | None = Field(
        None, description="Streams from outside the account's household networks (none set: all are home)."
    )
    on_outage: OutagePolicy | None = Field(
        None,
        description="New plays while the stream ledger's store is down: `deny` (503) or `allow` (decided by the API "
        "within the limit as far as it knows the user's streams, written back after). null: the deployment's "
        "PLAYGATE_OUTAGE_POLICY.",
    )

    def rules(self) -> Rules:
        """The domain rules these fields say."""
        return rules_from_json(self.model_dump(by_alias=True, include=_RULE_NAMES, exclude_none=True))


_RULE_NAMES = {
    "on_limit",
    "kinds",
    "max_per_title",
    "max_devices",
    "device_window_days",
    "max_away_streams",
    "on_outage",
}


class ShadowRules(RulesWire):
    """A policy decided beside the enforced one, never enforced: its would-be denials are counted and listed."""

    model_config = ConfigDict(extra="forbid")

    max_streams: Limit | None = Field(None, description="Its total; null: the user's limit.")

    def rules(self) -> Rules:
        """The domain rules these fields say, with the total."""
        return rules_from_json(self.model_dump(by_alias=True, include={*_RULE_NAMES, "max_streams"}, exclude_none=True))

    @classmethod
    def of(cls, rules: Rules) -> ShadowRules:
        """From the domain rules."""
        return cls.model_validate(rules_to_json(rules))
