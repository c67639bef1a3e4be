"""Users, videos and plans by the platform's ids: PUT create-or-update, bulk import through the route and the CLI."""

from __future__ import annotations

import asyncio
import secrets

import httpx
import orjson

from tests.integration.test_cli import playgate_here
from tests.integration.test_routes import assert_problem
from tests.support.clients import api_client, new_user
from tests.support.servers import ServerProcess

NDJSON = {"content-type": "application/x-ndjson"}


async def test_put_creates_then_updates_by_id_and_a_repeat_changes_nothing(app_admin: httpx.AsyncClient) -> None:
    tag = secrets.token_hex(4)
    plan = await app_admin.put(f"/v1/plans/p-{tag}", json={"name": f"Plan {tag}", "maxStreams": 2})
    assert plan.status_code == 201, plan.text
    again = await app_admin.put(f"/v1/plans/p-{tag}", json={"name": f"Plan {tag}", "maxStreams": 2})
    assert (again.status_code, again.json()) == (200, plan.json())
    user = await app_admin.put(f"/v1/users/u-{tag}", json={"plan": f"p-{tag}"})
    assert user.status_code == 201, user.text
    assert (user.json()["name"], user.json()["limit"], user.json()["plan"]) == (f"u-{tag}", 2, f"p-{tag}")
    renamed = await app_admin.put(f"/v1/users/u-{tag}", json={"name": f"named-{tag}", "limit": 4})
    assert (renamed.status_code, renamed.json()["name"], renamed.json()["limit"]) == (200, f"named-{tag}", 4)
    assert renamed.json()["plan"] == f"p-{tag}"  # absent fields keep their value
    video = await app_admin.put(f"/v1/videos/v-{tag}", json={"title": "A title", "url": "/media/x.mp4"})
    assert video.status_code == 201, video.text
    assert (await app_admin.put(f"/v1/videos/v-{tag}", json={"title": "Renamed"})).json()["title"] == "Renamed"
    # Refusals name the field: a new video without its url, an unknown plan, a name another user has.
    assert_problem(await app_admin.put(f"/v1/videos/w-{tag}", json={"title": "No url"}), 422, field="url")
    # Left out keeps a value; null is refused (schemathesis found these 500s), and nothing changes.
    assert_problem(await app_admin.put(f"/v1/videos/v-{tag}", json={"url": None}), 422, field="url")
    assert (await app_admin.get(f"/v1/videos/v-{tag}")).json()["url"] == "/media/x.mp4"
    assert_problem(await app_admin.put(f"/v1/plans/p-{tag}", json={"maxStreams": None}), 422, field="maxStreams")
    assert (await app_admin.get(f"/v1/plans/p-{tag}")).json()["maxStreams"] == 2
    assert_problem(await app_admin.put(f"/v1/users/u-{tag}", json={"name": None}), 422, field="name")
    assert_problem(await app_admin.put(f"/v1/users/u-{tag}", json={"disabled": None}), 422, field="disabled")
    assert_problem(await app_admin.put(f"/v1/users/x-{tag}", json={"plan": "no-such-plan"}), 422, field="plan")
    assert_problem(await app_admin.put(f"/v1/users/y-{tag}", json={"name": f"named-{tag}"}), 409, field="name")
    assert_problem(await app_admin.put("/v1/users/bad%20id", json={}), 422)
    # ... and the PUTs' schemas show those fields without null (schemathesis sent the null the schema allowed).
    schemas = (await app_admin.get("/openapi.json")).json()["components"]["schemas"]
    for model, fields in (
        ("UserPut", "name disabled household"),
        ("VideoPut", "title url kinds"),
        ("PlanPut", "name maxStreams"),
    ):
        for name in fields.split():
            shown = schemas[model]["properties"][name]
            assert "anyOf" not in shown, (model, name, shown)
            assert "default" not in shown, (model, name, shown)
            assert shown["type"] != "null", (model, name, shown)


async def test_an_import_of_100000_users_counts_reports_bad_rows_and_a_rerun_changes_nothing(
    app_admin: httpx.AsyncClient,
) -> None:
    tag = secrets.token_hex(4)
    assert (await app_admin.put(f"/v1/plans/gold-{tag}", json={"name": f"Gold {tag}", "maxStreams": 4})).is_success
    rows = [{"id": f"imp-{tag}-{n}", "plan": f"gold-{tag}"} for n in range(99_999)]
    rows[10] = {"id": f"imp-{tag}-10", "plan": "no-such-plan"}
    rows[20] = {"id": f"imp-{tag}-20", "limit": -1}
    rows[30] = {"id": f"imp-{tag}-30", "colour": "blue"}
    body = b"\n".join(orjson.dumps(r) for r in rows) + b"\nnot json\n"  # 100,000 rows: the most one call takes
    first = await app_admin.post("/v1/users:import", content=body, headers=NDJSON, timeout=120)
    assert first.status_code == 200, first.text
    report = first.json()
    assert (report["created"], report["updated"], report["unchanged"], report["refused"]) == (99_996, 0, 0, 4)
    refused = {(r["row"], r["field"]) for r in report["refusedRows"]}
    assert refused == {(11, "plan"), (21, "limit"), (31, "colour"), (100_000, "row")}
    rerun = (await app_admin.post("/v1/users:import", content=body, headers=NDJSON, timeout=120)).json()
    assert (rerun["created"], rerun["updated"], rerun["unchanged"], rerun["refused"]) == (0, 0, 99_996, 4)
    user = (await app_admin.get(f"/v1/users/imp-{tag}-99998")).json()
    assert (user["plan"], user["limit"]) == (f"gold-{tag}", 4)
    too_many = b"\n".join(orjson.dumps({"id": f"x{n}"}) for n in range(100_001))
    assert_problem(await app_admin.post("/v1/users:import", content=too_many, headers=NDJSON, timeout=120), 413)
    assert_problem(
        await app_admin.post("/v1/users:import", content=b"{", headers={"content-type": "application/json"}), 422
    )


async def test_json_arrays_and_a_changed_row_update(app_admin: httpx.AsyncClient) -> None:
    tag = secrets.token_hex(4)
    videos = [{"id": f"t-{tag}-{n}", "title": f"Title {n}", "url": f"/media/{n}.mp4"} for n in range(3)]
    first = (await app_admin.post("/v1/videos:import", json=videos)).json()
    assert (first["created"], first["refused"]) == (3, 0)
    videos[1]["title"] = "Changed"
    second = (await app_admin.post("/v1/videos:import", json=[*videos, videos[0]])).json()
    assert (second["created"], second["updated"], second["unchanged"], second["refused"]) == (0, 1, 2, 1)
    assert second["refusedRows"][0]["row"] == 4  # the same id twice: the first row was taken
    assert (await app_admin.get(f"/v1/videos/t-{tag}-1")).json()["title"] == "Changed"


async def test_import_from_the_command_line_csv_and_ndjson(server: ServerProcess, admin: httpx.AsyncClient) -> None:
    tag = secrets.token_hex(4)
    plans = server.data_dir / f"plans-{tag}.csv"
    plans.write_text(f"id,name,maxStreams\nbasic-{tag},Basic {tag},1\npremium-{tag},Premium {tag},4\n")
    users = server.data_dir / f"users-{tag}.csv"
    users.write_text(
        f"id,name,plan,limit,disabled\ncsv-{tag}-1,,basic-{tag},,false\ncsv-{tag}-2,Ann {tag},premium-{tag},2,\n"
        f"csv-{tag}-3,,nope-{tag},,\n"
    )
    result = await playgate_here(server.data_dir, "import", "plans", str(plans))
    assert result.exit_code == 0, result.stderr
    assert "plans: 2 created, 0 updated, 0 unchanged, 0 refused" in result.stdout
    result = await playgate_here(server.data_dir, "import", "users", str(users))
    assert result.exit_code == 1  # a row was refused
    assert "users: 2 created, 0 updated, 0 unchanged, 1 refused" in result.stdout
    assert f"row 3 (csv-{tag}-3): plan" in result.stderr
    assert (await admin.get(f"/v1/users/csv-{tag}-1")).json()["limit"] == 1
    assert (await admin.get(f"/v1/users/csv-{tag}-2")).json()["name"] == f"Ann {tag}"
    ndjson = server.data_dir / f"videos-{tag}.ndjson"
    ndjson.write_text(f'{{"id": "nd-{tag}", "title": "From NDJSON", "url": "/media/nd.mp4"}}\n')
    result = await playgate_here(server.data_dir, "import", "videos", str(ndjson))
    assert (result.exit_code, result.stdout.strip()) == (0, "videos: 1 created, 0 updated, 0 unchanged, 0 refused")


async def test_a_plan_import_carries_the_rules_and_names_the_field_and_row_of_a_bad_one(
    app_admin: httpx.AsyncClient,
) -> None:
    tag = secrets.token_hex(4)
    family = {
        "id": f"family-{tag}",
        "name": f"Family {tag}",
        "maxStreams": 4,
        "onLimit": "evict_oldest",
        "kinds": {"uhd": 1, "live": 2},
        "maxPerTitle": 2,
        "maxDevices": 6,
        "deviceWindowDays": 7,
        "maxAwayStreams": 1,
        "onOutage": "allow",
        "shadow": {"maxStreams": 2, "kinds": {"uhd": 0}},
    }
    bad = [
        {"id": f"b1-{tag}", "name": f"B1 {tag}", "maxStreams": 1, "onLimit": "pause"},
        {"id": f"b2-{tag}", "name": f"B2 {tag}", "maxStreams": 1, "kinds": {"uhd": -1}},
        {"id": f"b3-{tag}", "name": f"B3 {tag}", "maxStreams": 1, "maxDevices": "two"},
        {"id": f"b4-{tag}", "name": f"B4 {tag}", "maxStreams": 1, "shadow": {"maxPerTitle": -2}},
        {"id": f"b5-{tag}", "name": f"B5 {tag}", "maxStreams": 1, "household": ["10.0.0.0/8"]},
    ]
    answer = (await app_admin.post("/v1/plans:import", json=[family, *bad])).json()
    assert (answer["created"], answer["refused"]) == (1, 5)
    fields = {(r["row"], r["field"]) for r in answer["refusedRows"]}
    assert fields == {(2, "onLimit"), (3, "kinds.uhd"), (4, "maxDevices"), (5, "shadow.maxPerTitle"), (6, "household")}
    stored = (await app_admin.get(f"/v1/plans/family-{tag}")).json()
    stored["shadow"] = {k: v for k, v in stored["shadow"].items() if v is not None}
    assert {k: v for k, v in stored.items() if k != "id"} == {k: v for k, v in family.items() if k != "id"}

    # The same row again changes nothing; a rule given changes that rule alone, null lifts it, shadow null ends it.
    again = (await app_admin.post("/v1/plans:import", json=[family])).json()
    assert (again["unchanged"], again["updated"]) == (1, 0)
    change = {"id": f"family-{tag}", "maxPerTitle": None, "kinds": {"uhd": 2}, "shadow": None}
    changed = (await app_admin.post("/v1/plans:import", json=[change])).json()
    assert changed["updated"] == 1
    stored = (await app_admin.get(f"/v1/plans/family-{tag}")).json()
    assert stored.get("maxPerTitle") is None
    assert stored.get("shadow") is None
    assert (stored["kinds"], stored["maxDevices"], stored["onLimit"]) == ({"uhd": 2}, 6, "evict_oldest")


async def test_a_plan_csv_import_from_the_command_line_carries_the_rules(
    server: ServerProcess, admin: httpx.AsyncClient
) -> None:
    tag = secrets.token_hex(4)
    plans = server.data_dir / f"rules-{tag}.csv"
    plans.write_text(
        "id,name,maxStreams,onLimit,kinds,maxPerTitle,maxDevices,deviceWindowDays,maxAwayStreams\n"
        f'sports-{tag},Sports {tag},3,deny,"{{""live"": 1}}",1,4,2.5,1\n'
        f"broken-{tag},Broken {tag},3,,not json,,,,\n"
    )
    result = await playgate_here(server.data_dir, "import", "plans", str(plans))
    assert result.exit_code == 1  # the second row was refused
    assert "plans: 1 created, 0 updated, 0 unchanged, 1 refused" in result.stdout
    assert f"row 2 (broken-{tag}): kinds" in result.stderr
    stored = (await admin.get(f"/v1/plans/sports-{tag}")).json()
    assert (stored["kinds"], stored["maxPerTitle"], stored["maxDevices"]) == ({"live": 1}, 1, 4)
    assert (stored["deviceWindowDays"], stored["maxAwayStreams"], stored["onLimit"]) == (2.5, 1, "deny")


async def test_an_empty_body_is_refused_not_an_import_of_nothing(app_admin: httpx.AsyncClient) -> None:
    """Schemathesis sent no body and got 200 with nothing imported: a file that was not sent looked like success."""
    for kind in ("users", "videos", "plans"):
        for content_type in ("application/x-ndjson", "text/csv", "application/json"):
            for body in (b"", b"\n  \r\n"):
                answer = await app_admin.post(
                    f"/v1/{kind}:import", content=body, headers={"Content-Type": content_type}
                )
                assert_problem(answer, 422, field="body")
    no_ids = await app_admin.post("/v1/videos:import", content=b"{}", headers={"Content-Type": "text/csv"})
    assert_problem(no_ids, 422, field="body")  # a CSV whose header names no id column: no row could be stored
    header_only = await app_admin.post(
        "/v1/videos:import", content=b"id,title,url\n", headers={"Content-Type": "text/csv"}
    )
    assert (header_only.status_code, header_only.json()["created"]) == (200, 0)


async def test_a_file_the_command_line_cannot_read_is_one_error_not_a_traceback(
    server: ServerProcess,
) -> None:
    """A JSON file that is not an array ended `playgate import` with a traceback."""
    tag = secrets.token_hex(4)
    for name, text, said in (
        (f"object-{tag}.json", "{}", "not json (a JSON import is an array of objects)"),
        (f"names-{tag}.csv", "name,limit\nAnn,2\n", "not csv (the header row names no `id` column"),
        (f"empty-{tag}.ndjson", "\n \n", "is empty: no rows to import"),
    ):
        path = server.data_dir / name
        path.write_text(text)
        result = await playgate_here(server.data_dir, "import", "users", str(path))
        assert result.exit_code == 1, result.stdout
        assert f"Error: {path}" in result.stderr
        assert said in result.stderr
        assert "Traceback" not in result.stderr


async def test_a_csv_with_bare_carriage_returns_is_read_not_a_500(app_admin: httpx.AsyncClient) -> None:
    """Schemathesis sent a body starting with a bare \\r: the csv module refused it ("new-line character seen in
    unquoted field") and the import answered 500. Read with newline="", a \\r ends a row as \\n does."""
    fuzzed = await app_admin.post(
        "/v1/videos:import", content="\rÞ±;|¦Ï\xf2\xb9\xa6\x92Õ".encode(), headers={"Content-Type": "text/csv"}
    )
    assert fuzzed.status_code in (200, 422), fuzzed.text
    tag = secrets.token_hex(4)
    rows = f"id,title,url\rv-{tag},Title {tag},/media/v.mp4\r"
    answer = await app_admin.post("/v1/videos:import", content=rows.encode(), headers={"Content-Type": "text/csv"})
    assert answer.status_code == 200, answer.text
    assert (await app_admin.get(f"/v1/videos/v-{tag}")).json()["title"] == f"Title {tag}"


async def test_a_user_the_command_line_disables_loses_their_streams_at_once(
    server: ServerProcess, admin: httpx.AsyncClient
) -> None:
    # The server runs beside the command: the ends are in the ledger it reads (the media refused at once) and in
    # its audit trail, as a PATCH's are.
    user = await new_user(server.base_url, admin, limit=2)
    async with api_client(server.base_url, user.token) as client:
        plays = [(await client.post("/v1/plays?wait=5", json={"videoId": v})).json() for v in ("1", "2")]
    assert [play["status"] for play in plays] == ["allowed", "allowed"]
    playback_token = plays[0]["playbackUrl"].split("/v1/play/", 1)[1].split("/", 1)[0]
    async with api_client(server.base_url) as edge:
        assert (await edge.get("/v1/authorize", headers={"X-Playback-Token": playback_token})).status_code == 204
        rows = server.data_dir / f"disable-{user.id}.ndjson"
        rows.write_text(orjson.dumps({"id": user.id, "disabled": True}).decode() + "\n")
        result = await playgate_here(server.data_dir, "import", "users", str(rows))
        assert result.exit_code == 0, result.stderr
        assert "1 user(s) disabled: 2 stream(s) of theirs ended" in result.stdout
        assert (await admin.get(f"/users/{user.id}/streams")).json() == []
        assert (await edge.get("/v1/authorize", headers={"X-Playback-Token": playback_token})).status_code != 204
    ends: list[str] = []
    for _ in range(50):  # the server's audit trail takes the ledger's log every half second or so
        events = (await admin.get(f"/v1/users/{user.id}/events")).json()["events"]
        ends = [event["outcome"] for event in events if event["kind"] == "stream_end"]
        if len(ends) == 2:
            break
        await asyncio.sleep(0.1)
    assert ends == ["user_disabled", "user_disabled"]
