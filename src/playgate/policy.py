"""Plan rules as JSON objects: the shape the API, the catalogue and PLAYGATE_SHADOW_POLICY write them in.

`{"maxStreams"?, "onLimit"?, "kinds"?: {"uhd": 1}, "maxPerTitle"?, "maxDevices"?, "deviceWindowDays"?,
"maxAwayStreams"?}`: camelCase as on the wire; an absent field (or null) is no such cap.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from playgate.domain import DAY_S, DEVICE_WINDOW_DAYS, OutagePolicy, Policy, Rules
from playgate.errors import Invalid

FIELDS = (
    "maxStreams",
    "onLimit",
    "kinds",
    "maxPerTitle",
    "maxDevices",
    "deviceWindowDays",
    "maxAwayStreams",
    "onOutage",
)


def rules_to_json(rules: Rules) -> dict[str, Any]:
    """The JSON object of `rules`, caps that are not set left out."""
    body: dict[str, Any] = {
        "maxStreams": rules.max_streams,
        "onLimit": rules.on_limit.value if rules.on_limit is not None else None,
        "kinds": dict(rules.kind_limits) or None,
        "maxPerTitle": rules.max_per_title,
        "maxDevices": rules.max_devices,
        "deviceWindowDays": rules.device_window_s / DAY_S if rules.max_devices is not None else None,
        "maxAwayStreams": rules.max_away_streams,
        "onOutage": rules.on_outage.value if rules.on_outage is not None else None,
    }
    return {name: value for name, value in body.items() if value is not None}


def rules_from_json(body: Mapping[str, Any] | None) -> Rules:
    """Rules from their JSON object (as stored or validated before: bad values raise Invalid naming the field)."""
    if not body:
        return Rules()
    unknown = set(body) - set(FIELDS)
    if unknown:
        raise Invalid(f"Unknown rule {sorted(unknown)[0]!r}; rules are {', '.join(FIELDS)}.", field=sorted(unknown)[0])
    kinds = body.get("kinds") or {}
    if not isinstance(kinds, Mapping):
        raise Invalid('kinds: an object of kind tag to cap, such as {"uhd": 1}.', field="kinds")
    window_days = body.get("deviceWindowDays")
    on_limit = body.get("onLimit")
    on_outage = body.get("onOutage")
    if on_outage is not None and on_outage not in tuple(OutagePolicy):
        raise Invalid("onOutage: `deny` or `allow`.", field="onOutage")
    try:
        return Rules(
            max_streams=_cap(body, "maxStreams"),
            on_limit=Policy(on_limit) if on_limit is not None else None,
            kind_limits=tuple(sorted((str(tag), _count(cap, f"kinds.{tag}")) for tag, cap in kinds.items())),
            max_per_title=_cap(body, "maxPerTitle"),
            max_devices=_cap(body, "maxDevices"),
            device_window_s=float(window_days if window_days is not None else DEVICE_WINDOW_DAYS) * DAY_S,
            max_away_streams=_cap(body, "maxAwayStreams"),
            on_outage=OutagePolicy(on_outage) if on_outage is not None else None,
        )
    except ValueError as exc:
        raise Invalid(f"A rule is wrong: {exc}", field="onLimit") from None


def _cap(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    return None if value is None else _count(value, name)


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Invalid(f"{name}: a whole number, 0 or more.", field=name)
    return value


def resolve(rules: Rules, default_policy: Policy) -> Rules:
    """The rules with the deployment's policy where they name none."""
    return rules if rules.on_limit is not None else replace(rules, on_limit=default_policy)


def parse_networks(networks: Iterable[str]) -> tuple[str, ...]:
    """Networks in CIDR form, normalised (`10.0.0.1/24` -> `10.0.0.0/24`); Invalid naming `household`."""
    try:
        return tuple(str(ipaddress.ip_network(n.strip(), strict=False)) for n in networks)
    except ValueError as exc:
        raise Invalid(f"household: not a network ({exc}).", field="household") from None


def is_away(address: str | None, household: Iterable[str]) -> bool:
    """True when the account has household networks and `address` is in none of them (or is unknown)."""
    networks = [ipaddress.ip_network(n) for n in household]
    if not networks:
        return False
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return True
    return not any(ip in network for network in networks)
