"""The deployment files, validated offline: Kubernetes schemas, the compose spec, the Dockerfile, alerts, dashboard."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml
from check_jsonschema.builtin_schemas import get_builtin_schema
from dockerfile_parse import DockerfileParser

from playgate.cli import main as cli
from playgate.connections import check_redis_url, cluster_nodes
from playgate.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"
# The oldest Kubernetes these manifests support (preStop `sleep` is on by default from 1.30) and the newest
# whose schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _resources() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in _documents(path)]


def _by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in _resources() if r["kind"] == kind}


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _cli_commands() -> set[str]:
    return set(cli.commands)


# ---- Kubernetes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_is_valid_against_the_kubernetes_schema(path: Path, version: str) -> None:
    docs = _documents(path)
    assert docs, f"{path.name} holds no resource"
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_schema_check_rejects_a_wrong_field() -> None:
    deployment = copy.deepcopy(_by_kind("Deployment")["playgate-api"])
    _container(deployment)["livenessProbe"]["httpGet"]["port"] = {"not": "a port"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)
    deployment = copy.deepcopy(_by_kind("Deployment")["playgate-api"])
    deployment["spec"]["replica"] = 2  # a typo: strict schemas refuse unknown fields
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_the_manifests_hold_every_part_of_a_deployment() -> None:
    kinds = {(r["kind"], r["metadata"]["name"]) for r in _resources()}
    assert {
        ("Deployment", "playgate-api"),
        ("Deployment", "playgate-worker"),
        ("Service", "playgate-api"),
        ("ConfigMap", "playgate"),
        ("Secret", "playgate"),
        ("Job", "playgate-migrate"),
        ("PodDisruptionBudget", "playgate-api"),
        ("PodDisruptionBudget", "playgate-worker"),
        ("HorizontalPodAutoscaler", "playgate-api"),
        ("HorizontalPodAutoscaler", "playgate-worker"),
    } <= kinds


async def test_the_api_probes_hit_the_health_routes_on_the_served_port(base_url: str) -> None:
    api = _container(_by_kind("Deployment")["playgate-api"])
    assert api["args"] == ["api"]
    port = {p["name"]: p["containerPort"] for p in api["ports"]}["http"]
    assert str(port) == _by_kind("ConfigMap")["playgate"]["data"]["PLAYGATE_PORT"]
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert api["startupProbe"]["httpGet"]["path"] == "/healthz"
    annotations = _by_kind("Deployment")["playgate-api"]["spec"]["template"]["metadata"]["annotations"]
    # The paths the probes and the scrape use answer 200 on a real server.
    async with httpx.AsyncClient(base_url=base_url) as client:
        for path in ("/healthz", "/readyz", annotations["prometheus.io/path"]):
            assert (await client.get(path)).status_code == 200, path


def test_every_container_runs_a_playgate_command_as_non_root_with_limits() -> None:
    commands = _cli_commands()
    pods = [d["spec"]["template"]["spec"] for d in _by_kind("Deployment").values()]
    pods.append(_by_kind("Job")["playgate-migrate"]["spec"]["template"]["spec"])
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        for container in pod["containers"]:
            assert container["args"][0] in commands, container["args"]
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
            assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
            refs = {next(iter(source.values()))["name"] for source in container["envFrom"]}
            assert refs == {"playgate"}
    # The worker has no API: its probe server listens on PLAYGATE_METRICS_PORT (tests/ops/test_worker_probes.py).
    worker = _container(_by_kind("Deployment")["playgate-worker"])
    metrics_port = {e["name"]: e["value"] for e in worker["env"]}["PLAYGATE_METRICS_PORT"]
    assert {p["name"]: p["containerPort"] for p in worker["ports"]}["metrics"] == int(metrics_port)
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    annotations = _by_kind("Deployment")["playgate-worker"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == metrics_port


def test_budgets_and_autoscalers_target_the_deployments() -> None:
    deployments = _by_kind("Deployment")
    for name, pdb in _by_kind("PodDisruptionBudget").items():
        selected = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= selected.items()
        assert pdb["spec"]["minAvailable"] < deployments[name]["spec"]["replicas"]
    for hpa in _by_kind("HorizontalPodAutoscaler").values():
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    service = _by_kind("Service")["playgate-api"]
    assert (
        service["spec"]["selector"].items()
        <= deployments["playgate-api"]["spec"]["template"]["metadata"]["labels"].items()
    )


def test_configmap_and_secret_keys_are_settings_playgate_knows() -> None:
    from playgate.config import Settings

    known = {f"PLAYGATE_{name.upper()}" for name in Settings.model_fields}
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        known |= {c for c in getattr(alias, "choices", ()) if isinstance(c, str)}
    keys = set(_by_kind("ConfigMap")["playgate"]["data"]) | set(_by_kind("Secret")["playgate"]["stringData"])
    assert keys <= known, keys - known
    # The template carries no usable secret: an unfilled one makes the pods refuse to start.
    assert _by_kind("Secret")["playgate"]["stringData"]["PLAYGATE_JWT_SECRET"] == ""


def test_the_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    secret_files = {p.name for p in MANIFESTS if any(d["kind"] == "Secret" for d in _documents(p))}
    assert listed == {p.name for p in MANIFESTS} - secret_files


# ---- compose --------------------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def _compose_errors(document: dict[str, Any]) -> list[str]:
    # The compose-spec JSON schema as shipped (vendored from the spec) inside the check-jsonschema package.
    schema = get_builtin_schema("vendor.compose-spec")
    validator_class = jsonschema.validators.validator_for(schema)
    return [error.message for error in validator_class(schema).iter_errors(document)]


def test_the_compose_file_follows_the_compose_spec() -> None:
    assert _compose_errors(_compose()) == []


def test_the_compose_schema_check_rejects_a_wrong_field() -> None:
    broken = _compose()
    broken["services"]["api"]["deploy"]["replicas"] = ["two"]
    broken["services"]["redis"]["helthcheck"] = {}
    assert len(_compose_errors(broken)) >= 2


def test_compose_runs_two_apis_behind_nginx_two_workers_redis_with_aof_and_postgres() -> None:
    services = _compose()["services"]
    commands = _cli_commands()
    assert services["api"]["command"] == ["api"]
    assert services["api"]["deploy"]["replicas"] == 2
    assert services["worker"]["command"] == ["worker"]
    assert services["worker"]["deploy"]["replicas"] == 2
    port = services["worker"]["environment"]["PLAYGATE_METRICS_PORT"]
    assert f"http://127.0.0.1:{port}/readyz" in services["worker"]["healthcheck"]["test"][-1]
    for name in ("api", "worker", "migrate"):
        assert services[name]["command"][0] in commands
        env = services[name]["environment"]
        assert env["PLAYGATE_REDIS_URL"].startswith("redis://redis:")
        assert env["PLAYGATE_DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert services["migrate"]["command"] == ["db", "upgrade"]
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["nginx"]["depends_on"]["api"]["condition"] == "service_healthy"
    assert services["nginx"]["environment"]["PLAYGATE_UPSTREAM"] == "api:8080"


def test_compose_nginx_renders_every_variable_of_the_deploy_nginx_template() -> None:
    nginx = _compose()["services"]["nginx"]
    template_mount = next(v for v in nginx["volumes"] if v.endswith(":/etc/playgate/nginx.conf.template:ro"))
    template = (DEPLOY / template_mount.split(":")[0]).read_text()
    variables = set(re.findall(r"\$\{([A-Z_]+)\}", template))
    assert variables
    assert variables <= set(nginx["environment"])
    script = nginx["command"][-1]
    # $$ is compose's escape for a literal $: envsubst gets exactly the template's variables, so nginx's own
    # $variables stay as they are.
    assert set(re.findall(r"\$\$([A-Z_]+)", script.split("<")[0].split("envsubst", 1)[1])) == variables
    # nginx reads the media PlayGate writes: one volume, mounted in both.
    media_volume = next(v.split(":")[0] for v in nginx["volumes"] if nginx["environment"]["PLAYGATE_MEDIA_DIR"] in v)
    api_volumes = _compose()["services"]["api"]["volumes"]
    assert f"{media_volume}:/var/lib/playgate/media" in api_volumes


# ---- Dockerfile -----------------------------------------------------------------------------------------


def _dockerfile() -> DockerfileParser:
    parser = DockerfileParser(str(DEPLOY / "Dockerfile"))
    parser.build_args = {}
    return parser


def _final_stage(parser: DockerfileParser) -> list[dict[str, Any]]:
    structure: list[dict[str, Any]] = parser.structure
    last_from = max(i for i, item in enumerate(structure) if item["instruction"] == "FROM")
    return structure[last_from:]


def test_the_dockerfile_is_multi_stage_and_runs_playgate_as_non_root() -> None:
    parser = _dockerfile()
    assert parser.is_multistage
    froms = [i["value"] for i in parser.structure if i["instruction"] == "FROM"]
    assert len(froms) >= 2
    final = _final_stage(parser)
    assert any(i["instruction"] == "COPY" and i["value"].startswith("--from=build ") for i in final)
    users = [i["value"] for i in final if i["instruction"] == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    assert users[-1].split(":")[0] not in {"0", "root"}
    # The runtime stage installs no compiler and keeps no source tree.
    assert not any(i["instruction"] == "RUN" and "apt-get install" in i["value"] for i in final)
    assert not any(i["instruction"] == "COPY" and re.search(r"(^|\s)src\b", i["value"]) for i in final)
    entrypoint = json.loads(next(i["value"] for i in final if i["instruction"] == "ENTRYPOINT"))
    cmd = json.loads(next(i["value"] for i in final if i["instruction"] == "CMD"))
    assert entrypoint == ["playgate"]
    assert cmd[0] in _cli_commands()
    exposed = next(i["value"] for i in final if i["instruction"] == "EXPOSE")
    assert exposed == _by_kind("ConfigMap")["playgate"]["data"]["PLAYGATE_PORT"]


def test_the_dockerfile_copies_only_what_exists_and_the_ignore_file_keeps() -> None:
    root = DEPLOY.parent
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split("\n")
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for item in _dockerfile().structure:
        if item["instruction"] != "COPY" or item["value"].startswith("--from="):
            continue
        *sources, _dest = item["value"].split()
        for source in sources:
            assert (root / source).exists(), source
            assert source.rstrip("/") in kept, f"{source} is excluded from the build context"


# ---- Prometheus and Grafana -----------------------------------------------------------------------------


def _metric_names() -> set[str]:
    """Every sample name /metrics can expose (counters gain _total, histograms _bucket/_sum/_count)."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}
        names |= {family.name + s for s in suffixes.get(family.type, ())}
    return names


def _metrics_in(expr: str) -> set[str]:
    return set(re.findall(r"\b(playgate_[a-z_]+)", expr))


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: `make test` installs it (Debian package prometheus)")
    return path


def test_promtool_accepts_the_alert_rules_and_their_unit_tests_pass() -> None:
    promtool = _promtool()
    for args in (
        ["check", "rules", "alerts.yaml"],
        ["test", "rules", "alerts.test.yaml"],
        ["check", "config", "prometheus.yml"],
    ):
        result = subprocess.run(
            [promtool, *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_cover_queue_lag_decision_errors_and_readiness_on_metrics_we_export() -> None:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())["groups"]
    rules = {r["alert"]: r["expr"] for g in groups for r in g["rules"]}
    assert {"PlayGateQueueLagHigh", "PlayGateDecisionErrors", "PlayGateNotReady"} <= rules.keys()
    exported = _metric_names()
    for name, expr in rules.items():
        assert _metrics_in(expr) <= exported, (name, _metrics_in(expr) - exported)


def test_the_dashboard_queries_parse_and_use_only_metrics_we_export(tmp_path: Path) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "playgate.json").read_text())
    assert dashboard["uid"] == "playgate-overview"
    assert dashboard["panels"]
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exported = _metric_names()
    for expr in exprs:
        assert _metrics_in(expr), expr
        assert _metrics_in(expr) <= exported, (expr, _metrics_in(expr) - exported)
    wanted = {
        "playgate_http_requests_total",
        "playgate_decision_latency_seconds_bucket",
        "playgate_queue_depth",
        "playgate_queue_lag_seconds",
        "playgate_queue_pending",
        "playgate_requests_dead_lettered_total",
        "playgate_active_streams",
        "playgate_sockets_connected",
        "playgate_ledger_errors_total",
    }
    assert wanted <= set().union(*(_metrics_in(e) for e in exprs))
    # promtool parses PromQL in rule files: each query becomes a recording rule ($__rate_interval filled in).
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query{i}", "expr": e.replace("$__rate_interval", "1m")}
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([_promtool(), "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# ---- Redis Cluster --------------------------------------------------------------------------------------

K8S_CLUSTER = DEPLOY / "k8s-redis-cluster"
CLUSTER_NODES = 6


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_redis_cluster_manifests_are_valid_against_the_kubernetes_schema(version: str) -> None:
    for path in (K8S_CLUSTER / "redis-cluster.yaml", K8S_CLUSTER / "configmap-patch.yaml"):
        for doc in _documents(path):
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_redis_cluster_overlay_names_six_nodes_that_its_statefulset_runs() -> None:
    kustomization = yaml.safe_load((K8S_CLUSTER / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["../k8s", "redis-cluster.yaml"]
    [patch] = _documents(K8S_CLUSTER / "configmap-patch.yaml")
    assert (patch["kind"], patch["metadata"]["name"]) == ("ConfigMap", "playgate")
    url = patch["data"]["PLAYGATE_REDIS_URL"]
    check_redis_url(url)
    by_kind = {d["kind"]: d for d in _documents(K8S_CLUSTER / "redis-cluster.yaml")}
    statefulset = by_kind["StatefulSet"]
    assert statefulset["spec"]["replicas"] == CLUSTER_NODES
    service = statefulset["spec"]["serviceName"]
    assert cluster_nodes(url) == [(f"{statefulset['metadata']['name']}-{n}.{service}", 6379) for n in range(6)]
    command = statefulset["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--cluster-enabled") + 1] == "yes"
    create = " ".join(by_kind["Job"]["spec"]["template"]["spec"]["containers"][0]["command"])
    assert "--cluster create" in create
    assert "--cluster-replicas 1" in create


def _compose_cluster() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.redis-cluster.yaml").read_text())
    return loaded


def test_the_compose_redis_cluster_override_follows_the_compose_spec() -> None:
    assert _compose_errors(_compose_cluster()) == []


def test_the_compose_override_points_every_playgate_service_at_its_six_cluster_nodes() -> None:
    services = _compose_cluster()["services"]
    nodes = sorted(name for name in services if name.startswith("redis-node-"))
    assert len(nodes) == CLUSTER_NODES
    for name in nodes:
        command = services[name]["command"]
        assert command[command.index("--cluster-enabled") + 1] == "yes"
    base = _compose()["services"]
    for name in ("api", "worker", "migrate"):
        assert name in base
        url = services[name]["environment"]["PLAYGATE_REDIS_URL"]
        check_redis_url(url)
        assert sorted(host for host, _ in cluster_nodes(url)) == nodes
        assert services[name]["depends_on"]["redis-cluster-init"]["condition"] == "service_completed_successfully"
    init = services["redis-cluster-init"]
    assert set(init["depends_on"]) == set(nodes)
    assert "--cluster-replicas 1" in " ".join(init["command"])
