"""Create-or-update by id, many rows at once: a few reads per thousands of ids, then one INSERT and one UPDATE
statement for the whole batch (executemany), so that an import runs at thousands of rows a second instead of one
round trip per row. A row that cannot be stored (a taken name, an unknown plan, a new row missing a field) is
refused with its reason; the others are stored. A row equal to what is stored is left alone, so a re-run changes
nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from playgate.catalog.models import PlanRow, UserRow, VideoRow
from playgate.errors import Invalid
from playgate.policy import rules_from_json, rules_to_json
from playgate.values import frozen

# Ids per IN (...) list: well under SQLite's and asyncpg's limits on bound parameters.
CHUNK = 2000


@frozen
class Refusal:
    """A row that was not stored: its number in the input (1-based), its id, the field at fault and why."""

    row: int
    id: str | None
    field: str
    reason: str


@dataclass(slots=True)
class UpsertResult:
    """What an upsert did: rows created, updated, left unchanged (equal to what was stored), and refused; and the
    rows whose tokens it ended (a user disabled, enabled again or given a new password: its epoch raised)."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    refused: list[Refusal] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)

    def add(self, other: UpsertResult) -> None:
        """Add another batch's counts and refusals to these."""
        self.created += other.created
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.refused += other.refused
        self.revoked += other.revoked


@frozen
class Kind:
    """How one catalogue table is upserted: its changeable columns (with the field name that names each in a
    refusal), the columns a new row needs, a new row's other values, its unique column and its reference; and the
    columns whose change ends the row's tokens (`revoking`), by raising its `epoch` column."""

    noun: str
    table: Table
    fields: dict[str, str]
    required: tuple[str, ...]
    new_row: Callable[[str, float], dict[str, Any]]
    unique: str | None = None
    reference: tuple[str, Table] | None = None
    # Columns whose given value is merged into the stored one (a plan's rules: the fields given change, the others
    # stay), by a function of (stored or new row's value, given value) that raises Invalid naming a bad field.
    merge: dict[str, Callable[[Any, Any], Any]] = field(default_factory=dict)
    revoking: tuple[str, ...] = ()
    epoch: str | None = None


USERS = Kind(
    noun="user",
    table=UserRow.__table__,  # type: ignore[arg-type]
    fields={
        "name": "name",
        "own_limit": "limit",
        "plan_id": "plan",
        "disabled": "disabled",
        "password_hash": "password",
    },
    required=(),
    # A user named by the platform's id, without a password (it logs in with the platform's tokens).
    new_row=lambda user_id, now: {
        "id": user_id,
        "name": user_id,
        "password_hash": "",
        "own_limit": None,
        "plan_id": None,
        "disabled": False,
        "is_admin": False,
        "created_at": now,
    },
    unique="name",
    reference=("plan_id", PlanRow.__table__),  # type: ignore[arg-type]
    # As Catalog.update_user: a new password, and a disable either way (re-enabling does not revive old tokens).
    revoking=("password_hash", "disabled"),
    epoch="token_epoch",
)
VIDEOS = Kind(
    noun="video",
    table=VideoRow.__table__,  # type: ignore[arg-type]
    fields={"title": "title", "url": "url"},
    required=("title", "url"),
    new_row=lambda video_id, _now: {"id": video_id, "title": None, "url": None},
)


def _merge_rules(stored: dict[str, Any] | None, given: dict[str, Any]) -> dict[str, Any]:
    """A plan's rules with the given rule fields applied (null lifts a cap), as the catalogue stores them."""
    merged = {**(stored or {}), **given}
    return rules_to_json(rules_from_json({name: value for name, value in merged.items() if value is not None}))


PLANS = Kind(
    noun="plan",
    table=PlanRow.__table__,  # type: ignore[arg-type]
    fields={"name": "name", "max_streams": "maxStreams", "rules": "rules", "shadow": "shadow"},
    required=("name", "max_streams"),
    new_row=lambda plan_id, _now: {"id": plan_id, "name": None, "max_streams": None, "rules": {}, "shadow": None},
    unique="name",
    merge={"rules": _merge_rules},
)


def columns_of(kind: Kind, values: Any) -> dict[str, Any]:
    """The column values named by a row's fields (wire names, e.g. `limit` for `own_limit`); absent fields stay
    absent, so that they keep their stored value."""
    return {column: values[name] for column, name in kind.fields.items() if name in values}


def repeated(kind: Kind, row_id: str) -> str:
    """Why a row whose id came before in the same input is refused."""
    return f"{kind.noun} {row_id!r} appears twice in this import; the first row was taken"


def _chunks(values: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), CHUNK):
        yield values[start : start + CHUNK]


async def _stored(session: AsyncSession, kind: Kind, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The stored changeable columns of the rows with these ids."""
    table = kind.table
    columns = [table.c.id, *(table.c[c] for c in kind.fields)]
    stored: dict[str, dict[str, Any]] = {}
    for chunk in _chunks(ids):
        for row in (await session.execute(select(*columns).where(table.c.id.in_(chunk)))).mappings():
            stored[row["id"]] = {c: row[c] for c in kind.fields}
    return stored


async def _owners(session: AsyncSession, table: Table, column: str, values: Sequence[Any]) -> dict[Any, str]:
    """Which row id holds each of these values of `column` (for a unique column, or a referenced table's ids)."""
    owners: dict[Any, str] = {}
    for chunk in _chunks(values):
        query = select(table.c[column], table.c.id).where(table.c[column].in_(chunk))
        owners.update({value: row_id for value, row_id in (await session.execute(query)).all()})
    return owners


@dataclass
class _Batch:
    """One upsert under way: what is stored, and what the batch has decided so far."""

    kind: Kind
    stored: dict[str, dict[str, Any]]
    owners: dict[Any, str]
    references: set[Any]
    now: float
    result: UpsertResult = field(default_factory=UpsertResult)
    seen: set[str] = field(default_factory=set)
    inserts: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)

    def take(self, number: int, values: dict[str, Any]) -> None:
        """Decide one row: refuse it, or queue it for the INSERT or the UPDATE (or leave it, when unchanged)."""
        row_id = values["id"]
        given = {c: v for c, v in values.items() if c != "id"}
        old = self.stored.get(row_id)
        base = old or self.kind.new_row(row_id, self.now)
        merged = {**base, **given}
        try:
            for column, merge in self.kind.merge.items():
                if column in given:
                    merged[column] = merge(base[column], given[column])
        except Invalid as exc:
            self.result.refused.append(Refusal(number, row_id, str(exc.extra.get("field", column)), exc.detail))
            return
        refusal = self._refusal(row_id, old, merged, given)
        if refusal is not None:
            self.result.refused.append(Refusal(number, row_id, *refusal))
            return
        self.seen.add(row_id)
        self._claim(row_id, old, merged)
        if old is None:
            self.inserts.append(merged)
            self.result.created += 1
        elif any(old[c] != merged[c] for c in given):
            self.updates.append({"b_id": row_id, **{f"b_{c}": merged[c] for c in self.kind.fields}})
            if any(old[c] != merged[c] for c in self.kind.revoking if c in given):
                self.result.revoked.append(row_id)
            self.stored[row_id] = {c: merged[c] for c in self.kind.fields}
            self.result.updated += 1
        else:
            self.result.unchanged += 1

    def _refusal(
        self, row_id: str, old: dict[str, Any] | None, merged: dict[str, Any], given: dict[str, Any]
    ) -> tuple[str, str] | None:
        kind = self.kind
        if row_id in self.seen:
            return "id", repeated(kind, row_id)
        if old is None:
            missing = next((c for c in kind.required if given.get(c) is None), None)
            if missing is not None:
                return kind.fields[missing], f"required for a new {kind.noun}"
        if kind.reference is not None:
            column = kind.reference[0]  # a stored reference is valid (a foreign key): check given ones only
            if given.get(column) is not None and given[column] not in self.references:
                return kind.fields[column], f"no {kind.fields[column]} with id {merged[column]!r}"
        if kind.unique is not None:
            owner = self.owners.get(merged[kind.unique])
            if owner is not None and owner != row_id:
                what = kind.fields[kind.unique]
                return what, f"the {what} {merged[kind.unique]!r} belongs to {kind.noun} {owner!r}"
        return None

    def _claim(self, row_id: str, old: dict[str, Any] | None, merged: dict[str, Any]) -> None:
        """Record the row's unique value as its own, letting go of the value it had."""
        unique = self.kind.unique
        if unique is None:
            return
        if old is not None and self.owners.get(old[unique]) == row_id:
            del self.owners[old[unique]]
        self.owners[merged[unique]] = row_id


async def upsert(
    session: AsyncSession, kind: Kind, rows: Sequence[tuple[int, dict[str, Any]]], now: float
) -> UpsertResult:
    """Create or update each row (column values with `id`; absent columns keep their value) in `session`'s
    transaction; the caller commits. Returns the counts and the refused rows."""
    ids = list(dict.fromkeys(values["id"] for _, values in rows))
    stored = await _stored(session, kind, ids)
    owners: dict[Any, str] = {}
    if kind.unique is not None:
        wanted = {values.get(kind.unique) or (None if values["id"] in stored else values["id"]) for _, values in rows}
        owners = await _owners(session, kind.table, kind.unique, [v for v in wanted if v is not None])
    references: set[Any] = set()
    if kind.reference is not None:
        column, target = kind.reference
        named = {values.get(column) for _, values in rows} - {None}
        references = set(await _owners(session, target, "id", list(named)))
    batch = _Batch(kind, stored, owners, references, now)
    for number, values in rows:
        batch.take(number, values)
    table = kind.table
    # Updates first: a row may take a name another row of the batch lets go of.
    if batch.updates:
        setters: dict[str, Any] = {c: bindparam(f"b_{c}") for c in kind.fields}
        await session.execute(update(table).where(table.c.id == bindparam("b_id")).values(setters), batch.updates)
    if kind.epoch is not None:
        epoch = table.c[kind.epoch]
        for chunk in _chunks(batch.result.revoked):
            await session.execute(update(table).where(table.c.id.in_(chunk)).values({epoch: epoch + 1}))
    if batch.inserts:
        await session.execute(insert(table), batch.inserts)
    return batch.result
