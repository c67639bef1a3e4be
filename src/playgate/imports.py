"""Bulk import of users, videos and plans: rows read from NDJSON, a JSON array or CSV, each checked against its
schema, then created or updated by id in batches (catalog.bulk). Shared by `POST /v1/users:import` (and videos,
plans) and `playgate import`."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from playgate.catalog import bulk
from playgate.catalog.bulk import Kind, Refusal, UpsertResult
from playgate.catalog.service import Catalog
from playgate.policy import FIELDS, rules_to_json
from playgate.values import frozen
from playgate.wire import Flag, Id, Limit, Name, RulesWire, ShadowRules, Text, VideoUrl

MAX_ROWS = 100_000
# Rows per transaction: big enough for bulk statements, small enough to let other writers in between.
BATCH_ROWS = 10_000
KindName = Literal["users", "videos", "plans"]
RULE_FIELDS = tuple(name for name in FIELDS if name != "maxStreams")  # a plan's rules beside its total
Format = Literal["ndjson", "json", "csv"]


class _Row(BaseModel):
    """Base of an import row: camelCase fields, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: Id


class UserRowIn(_Row):
    """A user by the platform's id; absent fields keep their value (a new user: named by its id, no password)."""

    name: Name | None = None
    limit: Limit | None = Field(None, description="Own limit; null falls back to the plan, then the default.")
    plan: Id | None = None
    disabled: Flag | None = None


class VideoRowIn(_Row):
    """A video by the platform's id (a new one needs title and url)."""

    title: Text | None = None
    url: VideoUrl | None = None


class PlanRowIn(_Row, RulesWire):
    """A plan by id (a new one needs name and maxStreams), with its rules as `POST /v1/plans` takes them (absent:
    kept; null: lifted) and its shadow policy (null ends shadow mode)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: Name | None = None
    max_streams: Limit | None = Field(None, alias="maxStreams")
    shadow: ShadowRules | None = None

    def fields(self) -> dict[str, Any]:
        """The fields given (wire names), the rule fields gathered as `rules` and the shadow as stored."""
        given = self.model_dump(exclude_unset=True, by_alias=True)
        rules = {name: given.pop(name) for name in RULE_FIELDS if name in given}
        if rules:
            given["rules"] = rules
        if "shadow" in given:
            given["shadow"] = rules_to_json(self.shadow.rules()) if self.shadow is not None else None
        return given


@frozen
class Schema:
    """One importable kind: its row model and how it is stored."""

    row: type[_Row]
    kind: Kind


SCHEMAS: dict[KindName, Schema] = {
    "users": Schema(UserRowIn, bulk.USERS),
    "videos": Schema(VideoRowIn, bulk.VIDEOS),
    "plans": Schema(PlanRowIn, bulk.PLANS),
}

Parsed = tuple[int, dict[str, Any]] | Refusal


def records(data: bytes | str, fmt: Format) -> Iterator[tuple[int, Any]]:
    """(row number, raw record) pairs of the input; a line that is not JSON comes out as a Refusal."""
    text = data.decode() if isinstance(data, bytes) else data
    if fmt == "json":
        items = orjson.loads(text)
        if not isinstance(items, list):
            raise ValueError("a JSON import is an array of objects")
        yield from enumerate(items, start=1)
    elif fmt == "csv":
        yield from csv_records(io.StringIO(text, newline=""))  # newline="": the csv module reads \r itself
    else:
        yield from ndjson_records(text.splitlines())


def ndjson_records(lines: Iterable[str]) -> Iterator[tuple[int, Any]]:
    """One record per non-blank line, numbered by line; a line that is not JSON is a Refusal."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield number, Refusal(number, None, "row", f"not JSON ({exc})")


def csv_records(stream: Iterable[str]) -> Iterator[tuple[int, Any]]:
    """One record per CSV row after the header (numbered from 1); an empty cell is an absent field."""
    rows = csv.DictReader(stream)
    try:
        header = rows.fieldnames  # reads the header row
    except csv.Error as exc:
        raise ValueError(f"the header row is not CSV ({exc})") from None
    if header is not None and "id" not in header:
        raise ValueError("the header row names no `id` column, and every row is created or updated by its id")
    number = 0
    while True:
        number += 1
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as exc:  # past a malformed row the reader cannot find the next one: the rest is refused
            yield number, Refusal(number, None, "row", f"not CSV ({exc})")
            return
        yield number, {k: _cell(v) for k, v in row.items() if k is not None and v not in (None, "")}


def _cell(value: str) -> Any:
    """CSV cells are text: numbers and booleans as their JSON spelling, `null` as null, and a JSON object (a plan's
    `kinds` or `shadow`) as that object."""
    if value in ("true", "false", "null") or value.lstrip("-").isdigit():
        return orjson.loads(value)
    if value.startswith("{"):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value  # the schema refuses it, naming the field
    if _is_decimal(value):
        return float(value)
    return value


def _is_decimal(value: str) -> bool:
    """`7.5`, `-0.25`: a number with a fraction (deviceWindowDays)."""
    whole, dot, fraction = value.lstrip("-").partition(".")
    return bool(dot) and whole.isdigit() and fraction.isdigit()


def check(schema: Schema, numbered: Iterable[tuple[int, Any]]) -> Iterator[Parsed]:
    """Each record as (number, column values) when it fits the schema, else a Refusal naming the field (an id
    met before in the input is refused too: the first row with it is taken)."""
    seen: set[str] = set()
    for number, record in numbered:
        if isinstance(record, Refusal):
            yield record
            continue
        if not isinstance(record, dict):
            yield Refusal(number, None, "row", "not an object")
            continue
        try:
            row = schema.row.model_validate(record)
        except ValidationError as exc:
            error = exc.errors(include_input=False)[0]
            where = ".".join(str(p) for p in error["loc"]) or "row"
            row_id = record.get("id") if isinstance(record.get("id"), str) else None
            yield Refusal(number, row_id, where, error["msg"])
            continue
        if row.id in seen:
            yield Refusal(number, row.id, "id", bulk.repeated(schema.kind, row.id))
            continue
        seen.add(row.id)
        given = row.fields() if isinstance(row, PlanRowIn) else row.model_dump(exclude_unset=True, by_alias=True)
        yield number, {"id": row.id, **bulk.columns_of(schema.kind, given)}


def batches(parsed: Iterable[Parsed], size: int) -> Iterator[tuple[list[tuple[int, dict[str, Any]]], list[Refusal]]]:
    """The checked rows in batches of at most `size`, each with the refusals met on the way."""
    rows: list[tuple[int, dict[str, Any]]] = []
    refused: list[Refusal] = []
    for item in parsed:
        if isinstance(item, Refusal):
            refused.append(item)
        else:
            rows.append(item)
        if len(rows) + len(refused) >= size:
            yield rows, refused
            rows, refused = [], []
    if rows or refused:
        yield rows, refused


async def store(
    catalog: Catalog, kind: Kind, parsed: Iterable[Parsed], *, on_batch: Callable[[int], None] | None = None
) -> UpsertResult:
    """Create or update the checked rows by id, BATCH_ROWS per transaction; the refusals met on the way are added to
    the result (sorted by row). `on_batch` is told how many input rows each batch covered (a progress bar)."""
    result = UpsertResult()
    for rows, refused in batches(parsed, BATCH_ROWS):
        result.add(await catalog.upsert(kind, rows))
        result.refused += refused
        if on_batch is not None:
            on_batch(len(rows) + len(refused))
    result.refused.sort(key=lambda r: r.row)
    return result


def format_of(content_type: str | None, name: str | None = None) -> Format:
    """The input's format from a content type (`application/x-ndjson`, `application/json`, `text/csv`) or a file
    name (`.ndjson`/`.jsonl`, `.json`, `.csv`); NDJSON when neither says."""
    media = (content_type or "").split(";")[0].strip().lower()
    suffix = (name or "").rsplit(".", 1)[-1].lower() if name and "." in name else ""
    if media == "application/json" or suffix == "json":
        return "json"
    if media == "text/csv" or suffix == "csv":
        return "csv"
    return "ndjson"
