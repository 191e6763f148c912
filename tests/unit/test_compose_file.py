"""Structure checks for the deployment artifacts.

docker-compose.yaml, deploy/Dockerfile, deploy/k8s/*.yaml and the Grafana dashboard are not
exercised by any other test (no Docker engine or cluster is assumed), so these tests pin the
parts that matter: start order, health checks, the worker's configuration, KRaft settings,
non-root images and manifests that Kubernetes and Grafana will accept.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.deploy_files import dashboard_panels, dockerfile_instructions

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
K8S = ROOT / "deploy" / "k8s"
DASHBOARD = ROOT / "deploy" / "dashboards" / "sr-overview.json"
SEAWEEDFS_S3_CONFIG = ROOT / "deploy" / "compose" / "seaweedfs-s3.json"

WORKER_ENV = (
    "SR_KAFKA_BOOTSTRAP",
    "SR_PG_DSN",
    "SR_S3_ENDPOINT",
    "SR_S3_BUCKET",
    "SR_S3_PREFIX",
    "SR_POLICY_FILE",
    "SR_HTTP_HOST",
    "SR_HTTP_PORT",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
)
DASHBOARD_METRICS = (
    "sr_consumer_lag",
    "sr_runs_total",
    "sr_ready_published_total",
    "sr_dlq_total",
    "sr_evidence_verified_bytes_total",
    "sr_s3_request_duration_seconds_bucket",
    "sr_pg_query_duration_seconds_bucket",
)
_VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def _interpolate(value: str) -> str:
    """Resolve ${VAR:-default} the way Compose does when VAR is unset."""
    return _VAR.sub(lambda m: m.group(2) or "", value)


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: _interpolate(str(v)) for k, v in env.items()}


def _depends(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def _published(service: dict[str, Any]) -> dict[int, int]:
    """container port -> host port, from short-syntax port strings."""
    out = {}
    for spec in service.get("ports", []):
        parts = _interpolate(str(spec)).split(":")
        out[int(parts[-1].split("/")[0])] = int(parts[-2])
    return out


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs: dict[str, dict[str, Any]] = compose["services"]
    assert {"kafka", "postgres", "seaweedfs", "sr-init", "worker"} <= set(svcs)
    return svcs


# --------------------------------------------------------------------------- compose


def test_every_dependency_exists_and_is_acyclic(services: dict[str, dict[str, Any]]) -> None:
    valid = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, svc in services.items():
        for dep, cond in _depends(svc).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert cond in valid, f"{name} -> {dep}: bad condition {cond}"
            if cond == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} health, {dep} has none"

    def visit(name: str, stack: tuple[str, ...]) -> None:
        assert name not in stack, f"depends_on cycle: {' -> '.join((*stack, name))}"
        for dep in _depends(services[name]):
            visit(dep, (*stack, name))

    for name in services:
        visit(name, ())


@pytest.mark.parametrize("name", ["kafka", "postgres", "seaweedfs"])
def test_infrastructure_has_healthchecks(services: dict[str, dict[str, Any]], name: str) -> None:
    check = services[name].get("healthcheck")
    assert check, f"{name} has no healthcheck"
    test = check["test"]
    assert isinstance(test, list)
    assert test[0] in {"CMD", "CMD-SHELL"}
    assert not check.get("disable", False)


def test_healthcheck_commands(services: dict[str, dict[str, Any]]) -> None:
    kafka = " ".join(services["kafka"]["healthcheck"]["test"])
    assert re.search(r"/opt/kafka/bin/kafka-(broker-api-versions|topics)\.sh", kafka)
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    # The SeaweedFS image is Alpine (busybox wget, no curl); the check hits the S3 port.
    assert services["seaweedfs"]["healthcheck"]["test"][1:] == [
        "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8333/healthz"]


def test_kafka_is_single_node_kraft(services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    # Apache Kafka 4.x (KRaft only), not the 3.x line.
    assert int(kafka["image"].split(":", 1)[1].split(".")[0]) >= 4
    env = _env(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node_id = env["KAFKA_NODE_ID"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{node_id}@kafka:")
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env[key] == "1", key

    proto = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller in listeners
    assert controller not in advertised
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    assert set(listeners) <= set(proto)
    voter_port = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].rsplit(":", 1)[1]
    assert listeners[controller].endswith(f":{voter_port}")

    # The worker's bootstrap is an advertised in-network listener ...
    bootstrap = _env(services["worker"])["SR_KAFKA_BOOTSTRAP"]
    assert bootstrap in advertised.values()
    # ... and the host listener is published on the port it advertises.
    host = [addr for addr in advertised.values() if addr.startswith("localhost:")]
    assert len(host) == 1
    host_port = int(host[0].split(":")[1])
    published = _published(kafka)
    assert host_port in published.values()
    container_port = next(c for c, h in published.items() if h == host_port)
    assert any(addr.endswith(f":{container_port}") for addr in listeners.values())


def _weed_flags(service: dict[str, Any]) -> dict[str, str]:
    """``-name=value`` arguments of a ``weed`` command (``-flag`` alone maps to ``"true"``)."""
    flags = {}
    for arg in service["command"][1:]:
        name, _, value = str(arg).lstrip("-").partition("=")
        flags[name] = value or "true"
    return flags


def test_postgres(services: dict[str, dict[str, Any]]) -> None:
    pg = services["postgres"]
    assert re.fullmatch(r"postgres:17\.\d+", pg["image"]), pg["image"]
    assert any(str(v).endswith(":/var/lib/postgresql/data") for v in pg["volumes"])
    pg_env = _env(pg)
    dsn = _env(services["worker"])["SR_PG_DSN"]
    user, password = pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"]
    assert dsn == f"postgresql://{user}:{password}@postgres:5432/{pg_env['POSTGRES_DB']}"


def test_seaweedfs_serves_the_workers_bucket_with_its_keys(services: dict[str, dict[str, Any]]) -> None:
    weed = services["seaweedfs"]
    assert weed["image"].startswith("chrislusf/seaweedfs:")
    assert weed["command"][0] == "mini"
    flags = _weed_flags(weed)
    worker_env = _env(services["worker"])
    # The endpoint is this service's S3 port, published to the host as well.
    endpoint = worker_env["SR_S3_ENDPOINT"]
    assert endpoint == f"http://{weed['hostname']}:8333"
    assert flags.get("s3.port", "8333") == "8333"
    assert 8333 in _published(weed)
    # The bucket the worker writes to exists from the start (SR never creates it).
    bucket = worker_env["SR_S3_BUCKET"]
    assert 3 <= len(bucket) <= 63, "S3 bucket names must be 3-63 characters"
    assert bucket in flags["bucket"].split(",")
    # Measured quirks (shared/DESIGN.md): no telemetry, small volumes and room for many of them.
    assert flags["master.telemetry"] == "false"
    assert int(flags["master.volumeSizeLimitMB"]) <= 128
    assert int(flags["volume.max"]) >= 100
    # Authentication is on, and the worker's keys are an identity allowed to read and write.
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in weed["volumes"] if str(v).startswith("./")}
    config_source = mounts[flags["s3.config"]]
    assert (ROOT / config_source).resolve() == SEAWEEDFS_S3_CONFIG
    identities = json.loads(SEAWEEDFS_S3_CONFIG.read_text())["identities"]
    keys = {(c["accessKey"], c["secretKey"]): set(i["actions"]) for i in identities for c in i["credentials"]}
    actions = keys[(worker_env["AWS_ACCESS_KEY_ID"], worker_env["AWS_SECRET_ACCESS_KEY"])]
    assert {"Read", "Write", "List"} <= actions or "Admin" in actions
    assert any(str(v).endswith(":/data") for v in weed["volumes"]), "data must live in a named volume"
    assert not [name for name in services if "minio" in name], "MinIO's images are archived"


def test_sr_init_migrates_and_creates_topics(services: dict[str, dict[str, Any]]) -> None:
    init, worker = services["sr-init"], services["worker"]
    assert init["image"] == worker["image"]
    assert init["build"] == worker["build"]
    script = " ".join([*init.get("entrypoint", []), *init["command"]])
    assert re.search(r"sr db migrate\s*&&\s*sr topics create", script)
    deps = _depends(init)
    assert deps["kafka"] == deps["postgres"] == "service_healthy"
    assert set(WORKER_ENV) <= set(_env(init))


def test_worker_service(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert worker["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (ROOT / worker["build"]["context"] / worker["build"]["dockerfile"]).is_file()
    assert worker.get("command", ["run"]) == ["run"]
    assert "entrypoint" not in worker
    deps = _depends(worker)
    assert deps["sr-init"] == "service_completed_successfully"
    for name in ("kafka", "postgres", "seaweedfs"):
        assert deps[name] == "service_healthy"
    assert _published(worker).get(8080) == 8080

    env = _env(worker)
    missing = [k for k in WORKER_ENV if not env.get(k)]
    assert not missing, f"worker env not set: {missing}"
    assert env["SR_S3_BUCKET"] == "scenario-runner"
    assert env["SR_S3_PREFIX"] == "sr"
    assert env["SR_POLICY_FILE"] == "/app/schemas/policy.example.toml"
    # The worker's HTTP endpoints must listen on all interfaces of the container, on the
    # port that is published and probed.
    assert (env["SR_HTTP_HOST"], str(env["SR_HTTP_PORT"])) == ("0.0.0.0", "8080")
    assert env["SR_KAFKA_BOOTSTRAP"] == "kafka:19092"
    # sr-init migrated before the worker starts; the worker does not migrate again.
    assert env["SR_MIGRATE"] == "false"
    assert "SR_MIGRATE" not in _env(services["sr-init"])
    # Graceful shutdown finishes in-flight runs; compose's default 10 s would cut it short.
    assert worker["stop_grace_period"] == "60s"


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            source = str(vol).split(":", 1)[0]
            if not source.startswith((".", "/", "~")):
                assert source in declared, f"{name} uses undeclared volume {source}"


def test_docker_compose_config_when_available() -> None:
    """`docker compose config` validates the file offline, if the Compose plugin exists."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker CLI not installed")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False, timeout=30)
    if probe.returncode != 0:
        pytest.skip("docker compose plugin not installed")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- Dockerfile


def _instructions() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE)


def test_dockerfile() -> None:
    ins = _instructions()
    froms = [rest for kw, rest in ins if kw == "FROM"]
    assert len(froms) >= 2, "expected a multi-stage build"
    # The base image itself (digest-pinned, the locked Python) is checked in test_deploy_manifests.
    assert any(kw == "ARG" and rest.startswith("PYTHON_IMAGE=python:3.11.") for kw, rest in ins)

    final = ins[max(i for i, (kw, _) in enumerate(ins) if kw == "FROM") :]
    users = [rest for kw, rest in final if kw == "USER"]
    assert users, "final stage has no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert any(kw == "COPY" and rest.startswith("schemas/") for kw, rest in final)

    health = [rest for kw, rest in final if kw == "HEALTHCHECK"]
    assert len(health) == 1
    assert "/healthz" in health[0]
    assert ":8080" in health[0]
    assert ("ENTRYPOINT", '["sr"]') in final
    assert ("CMD", '["run"]') in final

    installs = " ".join(rest for kw, rest in ins if kw == "RUN")
    assert "pip install --no-deps ." in installs
    assert "embedded" not in installs


def test_dockerignore() -> None:
    entries = {line.strip().strip("/") for line in DOCKERIGNORE.read_text().splitlines()}
    for required in (".venv", ".git", ".sr-dev", "bench/results", ".mypy_cache", ".pytest_cache"):
        assert required in entries, required
    # The build needs these: never ignore them.
    assert not {"worker", "schemas", "pyproject.toml", "README.md", "LICENSE", "deploy/constraints.txt"} & entries
    assert not {"deploy", "*.txt", "deploy/*.txt"} & entries


# --------------------------------------------------------------------------- Kubernetes


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def _by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in _manifests() if doc["kind"] == kind]


def test_k8s_manifests_are_well_formed() -> None:
    docs = _manifests()
    kinds = {doc.get("kind") for _, doc in docs}
    expected = {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "Job"}
    assert expected <= kinds
    assert "Secret" not in kinds, "the real Secret is created out of band (deploy/k8s/sr-secrets.env.example)"
    seen = set()
    for name, doc in docs:
        assert isinstance(doc, dict), name
        assert doc.get("apiVersion"), name
        assert doc.get("kind"), name
        assert doc.get("metadata", {}).get("name"), name
        assert "namespace" not in doc["metadata"], f"{name}: manifests must be namespace-agnostic"
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in seen, f"duplicate {key}"
        seen.add(key)


def _pod(workload: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = workload["spec"]["template"]["spec"]
    return pod


def _assert_hardened(pod: dict[str, Any]) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]


def _refs(container: dict[str, Any]) -> set[str]:
    return {next(iter(ref.values()))["name"] for ref in container.get("envFrom", [])}


def test_deployment() -> None:
    (dep,) = _by_kind("Deployment")
    spec = dep["spec"]
    assert spec["replicas"] == 2
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    pod = _pod(dep)
    assert pod["terminationGracePeriodSeconds"] == 60
    _assert_hardened(pod)
    (c,) = pod["containers"]
    assert c["args"] == ["run"]
    port = next(p for p in c["ports"] if p["containerPort"] == 8080)
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path
        assert get["port"] in {8080, port["name"]}
    assert c["resources"]["requests"]
    assert c["resources"]["limits"]["memory"]

    names = {(d["kind"], d["metadata"]["name"]) for _, d in _manifests()}
    for ref in _refs(c):
        # sr-secrets is the Secret created from the template (test_deploy_manifests checks it).
        assert ("ConfigMap", ref) in names or ref == "sr-secrets", ref
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert "/tmp" in mounts.values(), "read-only root fs needs a writable /tmp"
    for vol in pod["volumes"]:
        if "configMap" in vol:
            assert ("ConfigMap", vol["configMap"]["name"]) in names

    # SR_POLICY_FILE points into the mounted policy ConfigMap.
    (cfg,) = [d for d in _by_kind("ConfigMap") if d["metadata"]["name"] == "sr-config"]
    policy_file = Path(cfg["data"]["SR_POLICY_FILE"])
    policy_vol = next(v for v in pod["volumes"] if v.get("configMap", {}).get("name") == "sr-policy")
    assert Path(mounts[policy_vol["name"]]) / policy_file.name == policy_file
    (policy,) = [d for d in _by_kind("ConfigMap") if d["metadata"]["name"] == "sr-policy"]
    assert policy_file.name in policy["data"]


def test_service_pdb_and_job_match_the_deployment() -> None:
    (dep,) = _by_kind("Deployment")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    (svc,) = _by_kind("Service")
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert any(p["port"] == 8080 for p in svc["spec"]["ports"])
    (pdb,) = _by_kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable") == 1

    (job,) = _by_kind("Job")
    jpod = _pod(job)
    _assert_hardened(jpod)
    (jc,) = jpod["containers"]
    assert jc["args"] == ["db", "migrate"]
    assert jpod["restartPolicy"] in {"Never", "OnFailure"}
    (wc,) = _pod(dep)["containers"]
    assert jc["image"] == wc["image"]
    assert _refs(jc) == _refs(wc)


def test_readme_warns_about_transaction_pooling() -> None:
    text = (ROOT / "deploy" / "README.md").read_text().lower()
    assert "session" in text
    assert "advisory lock" in text
    assert "transaction pooling" in text


# --------------------------------------------------------------------------- Grafana




def test_dashboard() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"]
    assert dash["title"]
    variables = dash["templating"]["list"]
    ds_vars = [v for v in variables if v["type"] == "datasource" and v["query"] == "prometheus"]
    assert ds_vars, "needs a Prometheus datasource variable"
    ds_ref = f"${{{ds_vars[0]['name']}}}"

    exprs = []
    ids = set()
    for panel in dashboard_panels(dash):
        if panel["type"] == "row":
            continue
        assert panel["id"] not in ids
        ids.add(panel["id"])
        assert panel["datasource"]["uid"] == ds_ref, panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        assert panel["targets"], panel["title"]
        exprs += [t["expr"] for t in panel["targets"]]
    joined = "\n".join(exprs)
    for metric in DASHBOARD_METRICS:
        assert re.search(rf"\b{metric}\b", joined), f"dashboard does not chart {metric}"
    assert re.search(r"sum by \(status\) \(rate\(sr_runs_total", joined)
    assert re.search(r"by \([^)]*partition[^)]*\) \(sr_consumer_lag", joined)
    for metric in ("sr_s3_request_duration_seconds_bucket", "sr_pg_query_duration_seconds_bucket"):
        assert re.search(rf"histogram_quantile\(0\.\d+, sum by \(le\) \(rate\({metric}", joined)
