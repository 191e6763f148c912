"""Deploy and packaging checks that need no cluster, registry or Docker engine.

The Kubernetes manifests, the kustomization, the Secret template, the image's base and lock,
and the distribution metadata are only read by tools this suite does not run (kubectl,
docker build, pip from an index), so these tests pin what those tools would rely on: pinned
images, a PDB that cannot block drains, probes on the right endpoints, workers that never
migrate while the Job does, no Secret that `kubectl apply` could push over the real one, and
a runtime dependency set without test-only packages.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import re
import signal
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.harness.deploy_files import dockerfile_instructions
from worker.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUSTOMIZATION = DEPLOY / "kustomization.yaml"
SECRET_TEMPLATE = K8S / "sr-secrets.env.example"
DOCKERFILE = DEPLOY / "Dockerfile"
CONSTRAINTS = DEPLOY / "constraints.txt"
PYPROJECT = ROOT / "pyproject.toml"
LICENSE = ROOT / "LICENSE"
MANIFEST_SUFFIXES = {".yaml", ".yml", ".json"}  # what `kubectl apply -f DIR` reads
# sha256 of the Apache License 2.0 text as the ASF publishes it (LICENSE-2.0.txt, 202 lines).
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"
SECRET_KEYS = {"SR_PG_DSN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
TEST_ONLY = {"psutil", "pytest", "pytest-timeout", "hypothesis", "ruff", "mypy", "testcontainers", "pyyaml"}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _manifest_files(directory: Path, *, recursive: bool) -> list[Path]:
    paths = directory.rglob("*") if recursive else directory.iterdir()
    return sorted(p for p in paths if p.is_file() and p.suffix in MANIFEST_SUFFIXES)


def _objects() -> list[dict[str, Any]]:
    """Every object `kubectl apply -f deploy/k8s/` applies (the directory, not recursive)."""
    return [doc for path in _manifest_files(K8S, recursive=False) for doc in _docs(path)]


def _one(kind: str) -> dict[str, Any]:
    (obj,) = [doc for doc in _objects() if doc["kind"] == kind]
    return obj


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _kustomization() -> dict[str, Any]:
    doc = yaml.safe_load(KUSTOMIZATION.read_text())
    assert isinstance(doc, dict)
    return doc


def _pyproject() -> dict[str, Any]:
    return tomllib.loads(PYPROJECT.read_text())


def _image_is_pinned(image: str) -> bool:
    """A digest, or a tag that names a release (has a dot: ``4.3.1``, ``17.10``), never ``latest``."""
    if re.search(r"@sha256:[0-9a-f]{64}$", image):
        return True
    name, sep, tag = image.rpartition(":")
    if not sep or "/" in tag or not name:
        return False  # no tag at all: Docker means :latest
    return tag != "latest" and bool(re.fullmatch(r"v?\d+(\.\d+)+([-._][\w.-]+)?", tag))


# --------------------------------------------------------------------------- images


@pytest.mark.parametrize(("image", "pinned"), [
    ("apache/kafka:4.3.1", True),
    ("postgres:17.10", True),
    ("python:3.11.7-slim-bookworm@sha256:" + "a" * 64, True),
    ("postgres:17", False),
    ("minio/minio:latest", False),
    ("chrislusf/seaweedfs", False),
    ("localhost:5000/sr", False),
])
def test_the_pin_check_itself(image: str, pinned: bool) -> None:
    assert _image_is_pinned(image) is pinned


def test_compose_images_are_pinned() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    for name, svc in compose["services"].items():
        if "build" in svc:
            continue  # SR's own image, built from this tree
        assert _image_is_pinned(svc["image"]), f"{name}: {svc['image']} is not pinned to a release or digest"


def test_k8s_images_are_pinned_and_the_same_everywhere() -> None:
    images = {_container(doc)["image"] for doc in _objects() if doc["kind"] in {"Deployment", "Job"}}
    assert len(images) == 1, f"the workers and the migrate Job must run one image: {images}"
    (image,) = images
    assert _image_is_pinned(image), image


# --------------------------------------------------------------------------- k8s objects


def test_pdb_lets_unhealthy_workers_be_evicted() -> None:
    pdb = _one("PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    # Without it, an outage that makes every worker unready exhausts the budget and blocks drains.
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    pod_labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_probes_use_the_health_endpoints_with_sensible_timing() -> None:
    c = _container(_one("Deployment"))
    http_port = next(p for p in c["ports"] if p["containerPort"] == 8080)
    expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        spec = c[probe]
        assert spec["httpGet"]["path"] == path, probe
        assert spec["httpGet"]["port"] in {8080, http_port["name"]}, probe
        period = spec.get("periodSeconds", 10)
        assert 1 <= period <= 60, f"{probe}: periodSeconds {period}"
        assert spec.get("timeoutSeconds", 1) < period, f"{probe}: a probe must time out before the next one"
    live, ready = c["livenessProbe"], c["readinessProbe"]
    # A restart is the heavy remedy: liveness tolerates at least 30 s of failed probes, and
    # readiness (which only takes the pod out of the Service) reacts faster than liveness.
    assert live["periodSeconds"] * live.get("failureThreshold", 3) >= 30
    assert ready["periodSeconds"] * ready.get("failureThreshold", 3) <= live["periodSeconds"] * live.get(
        "failureThreshold", 3)
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup.get("failureThreshold", 3) >= 30, "start-up needs room"


def _env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def test_the_workers_start_with_migrations_off() -> None:
    dep = _one("Deployment")
    c = _container(dep)
    env = _env_of(c)
    assert "SR_MIGRATE" in env, "the Deployment must set SR_MIGRATE"
    (config,) = [d for d in _objects() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "sr-config"]
    # Put in the shared ConfigMap it would reach the Job too; it belongs to the workers only.
    assert "SR_MIGRATE" not in config["data"]
    # The value as SR itself reads it, so a spelling SR does not accept cannot pass.
    assert load_settings(None, {"SR_MIGRATE": env["SR_MIGRATE"]}).migrate is False
    assert "--no-migrate" not in c["args"], "one switch (SR_MIGRATE), not two"


def test_the_job_migrates_and_the_workers_run() -> None:
    from worker.cli.db import cmd_db_migrate
    from worker.cli.main import build_parser
    from worker.cli.run import cmd_run

    job, dep = _one("Job"), _one("Deployment")
    parser = build_parser()
    assert parser.parse_args(_container(job)["args"]).handler is cmd_db_migrate
    assert parser.parse_args(_container(dep)["args"]).handler is cmd_run
    assert job["spec"]["template"]["spec"]["restartPolicy"] in {"Never", "OnFailure"}
    # Finished Jobs go away, so the next apply of an upgraded image can create a new one.
    assert 0 < job["spec"]["ttlSecondsAfterFinished"] <= 86_400


@pytest.fixture
def restore_signals() -> Iterator[None]:
    # cmd_run installs stop handlers and leaves SIGTERM/SIGINT ignored when it returns.
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


class _FakeWorker:
    """Stands in for worker.runtime.worker.Worker: records how ``sr run`` built it."""

    built: ClassVar[list[bool]] = []

    def __init__(self, settings: Settings, policy: object, *, migrate_db: bool = True) -> None:
        type(self).built.append(migrate_db)

    def run(self) -> None:
        """Return at once (the real one polls Kafka until stopped)."""

    def stop(self) -> None:
        """Nothing to stop."""


@pytest.mark.parametrize(("environ", "no_migrate_flag", "migrates"), [
    ({}, False, True),  # default: dev stacks and compose migrate at start
    ({"SR_MIGRATE": "false"}, False, False),  # the Deployment
    ({"SR_MIGRATE": "true"}, True, False),  # --no-migrate still wins
    ({"SR_MIGRATE": "0"}, False, False),
])
def test_sr_run_migrates_only_when_both_allow_it(
    monkeypatch: pytest.MonkeyPatch, restore_signals: None, environ: dict[str, str], no_migrate_flag: bool,
    migrates: bool,
) -> None:
    import worker.logs
    import worker.runtime.compose
    import worker.runtime.worker
    from worker.cli.run import cmd_run

    monkeypatch.setattr(worker.runtime.worker, "Worker", _FakeWorker)
    monkeypatch.setattr(worker.runtime.compose, "load_policy_file", lambda path: object())
    monkeypatch.setattr(worker.logs, "configure_logging", lambda *a, **k: None)
    _FakeWorker.built = []
    settings = load_settings(None, environ)
    assert cmd_run(argparse.Namespace(settings=settings, no_migrate=no_migrate_flag)) == 0
    assert _FakeWorker.built == [migrates]


# --------------------------------------------------------------------------- Secret


def test_no_secret_manifest_in_apply_scope() -> None:
    # -f deploy/k8s/ (and -R, and the kustomization) must never carry a Secret: applied, it
    # would replace the real one with placeholders.
    for path in _manifest_files(K8S, recursive=True):
        for doc in _docs(path):
            assert doc.get("kind") != "Secret", f"{path.relative_to(ROOT)} is a Secret manifest"
    kust = _kustomization()
    assert "secretGenerator" not in kust
    for resource in kust["resources"]:
        for doc in _docs(DEPLOY / resource):
            assert doc.get("kind") != "Secret", resource


def _env_file(path: Path) -> dict[str, str]:
    """Parse like ``kubectl create secret --from-env-file``: KEY=VALUE lines, # comments."""
    values = {}
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition("=")
        assert sep, f"not KEY=VALUE: {stripped!r}"
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), key
        assert key not in values, f"duplicate {key}"
        values[key] = value
    return values


def test_the_secret_template_has_placeholders_only() -> None:
    assert SECRET_TEMPLATE.suffix not in MANIFEST_SUFFIXES
    values = _env_file(SECRET_TEMPLATE)
    assert set(values) >= SECRET_KEYS
    for key, value in values.items():
        assert "REPLACE_ME" in value, f"{key} must be a placeholder"
    # The workers and the Job read exactly this Secret ...
    for kind in ("Deployment", "Job"):
        refs = {ref["secretRef"]["name"] for ref in _container(_one(kind))["envFrom"] if "secretRef" in ref}
        assert refs == {"sr-secrets"}, kind
    assert "sr-secrets" in SECRET_TEMPLATE.read_text()
    # ... and nothing secret sits in a ConfigMap.
    config_keys = {k for d in _objects() if d["kind"] == "ConfigMap" for k in d.get("data", {})}
    assert not config_keys & set(values)


# --------------------------------------------------------------------------- kustomization


def test_the_kustomization_lists_every_manifest() -> None:
    kust = _kustomization()
    assert kust["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kust["kind"] == "Kustomization"
    resources = list(kust["resources"])
    assert len(resources) == len(set(resources)), "a resource listed twice"
    for resource in resources:
        assert (DEPLOY / resource).is_file(), f"{resource} does not exist"
    top_level = {str(p.relative_to(DEPLOY)) for p in _manifest_files(K8S, recursive=False)}
    assert set(resources) == top_level
    # A kustomization.yaml inside deploy/k8s/ would break `kubectl apply -f deploy/k8s/`.
    assert not (K8S / "kustomization.yaml").exists()
    assert not (K8S / "kustomization.yml").exists()


def test_optional_manifests_have_their_place_in_the_kustomization() -> None:
    # Manifests in sub-directories (monitoring/: CRDs of the Prometheus Operator) are opt-in:
    # listed, or commented out under resources so enabling them is one uncommented line.
    text = KUSTOMIZATION.read_text()
    listed = set(_kustomization()["resources"])
    commented = set(re.findall(r"^\s*#\s*-\s*(k8s/\S+)\s*$", text, flags=re.MULTILINE))
    nested = {str(p.relative_to(DEPLOY)) for p in _manifest_files(K8S, recursive=True) if p.parent != K8S}
    missing = sorted(nested - listed - commented)
    assert not missing, f"not in deploy/kustomization.yaml (listed or commented): {missing}"
    for path in commented:
        assert (DEPLOY / path).is_file(), f"commented resource {path} does not exist"


# --------------------------------------------------------------------------- image build


def _dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE)


def _base_image() -> str:
    args = [rest for kw, rest in _dockerfile() if kw == "ARG" and rest.startswith("PYTHON_IMAGE=")]
    assert len(args) == 1
    return args[0].split("=", 1)[1]


def test_the_base_image_is_digest_pinned_on_the_locked_python() -> None:
    image = _base_image()
    match = re.fullmatch(r"python:(\d+\.\d+\.\d+)-slim-bookworm@sha256:[0-9a-f]{64}", image)
    assert match, f"base image must be python:X.Y.Z-slim-bookworm@sha256:<digest>, not {image}"
    version = Version(match.group(1))
    floor = Version(_pyproject()["project"]["requires-python"].removeprefix(">="))
    assert (version.major, version.minor) == (floor.major, floor.minor), "the image runs the oldest supported Python"
    # The lock was resolved on this exact interpreter (markers, wheels).
    header = re.search(r"CPython (\d+\.\d+\.\d+)", CONSTRAINTS.read_text())
    assert header and header.group(1) == match.group(1)
    froms = [rest for kw, rest in _dockerfile() if kw == "FROM"]
    assert froms and all(f.split()[0] == "${PYTHON_IMAGE}" for f in froms)


def test_the_lock_is_installed_in_its_own_layer_before_the_source() -> None:
    ins = _dockerfile()

    def first(predicate: Any) -> int:
        return next(i for i, item in enumerate(ins) if predicate(item))

    copy_lock = first(lambda i: i[0] == "COPY" and "deploy/constraints.txt" in i[1])
    install_lock = first(lambda i: i[0] == "RUN" and "-r deploy/constraints.txt" in i[1])
    copy_source = first(lambda i: i[0] == "COPY" and i[1].startswith("worker/"))
    install_pkg = first(lambda i: i[0] == "RUN" and "pip install --no-deps ." in i[1])
    assert copy_lock < install_lock < copy_source < install_pkg
    # Nothing but the lock reaches the dependency layer, so a source edit keeps its cache.
    assert not any(kw == "COPY" and rest.split()[0] in {".", "./"} for kw, rest in ins[:install_lock])
    assert "pip check" in ins[install_pkg][1]
    assert "embedded" not in " ".join(rest for kw, rest in ins if kw == "RUN")


def test_the_image_carries_oci_labels() -> None:
    labels = " ".join(rest for kw, rest in _dockerfile() if kw == "LABEL")
    found = dict(re.findall(r'(org\.opencontainers\.image\.[\w.]+)="([^"]*)"', labels))
    for key in ("title", "description", "licenses", "version", "revision", "created", "base.name"):
        assert f"org.opencontainers.image.{key}" in found, key
    assert found["org.opencontainers.image.licenses"] == _pyproject()["project"]["license"]


def _lock() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"not name==version: {line!r}"
            pins[canonicalize_name(name)] = version
    return pins


def test_the_lock_pins_every_runtime_dependency_within_its_range() -> None:
    pins = _lock()
    for spec in _pyproject()["project"]["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in deploy/constraints.txt: run deploy/lock_constraints.py"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {spec}"
    assert not TEST_ONLY & set(pins), f"test-only packages in the image lock: {TEST_ONLY & set(pins)}"


# --------------------------------------------------------------------------- packaging


def test_runtime_dependencies_hold_no_test_only_package() -> None:
    project = _pyproject()["project"]
    runtime = {canonicalize_name(Requirement(s).name) for s in project["dependencies"]}
    assert "psutil" not in runtime
    assert not TEST_ONLY & runtime, TEST_ONLY & runtime
    dev = {canonicalize_name(Requirement(s).name) for s in project["optional-dependencies"]["dev"]}
    assert {"psutil", "pytest", "pyyaml"} <= dev, "the tests' own needs must stay in the dev extra"


def test_worker_never_imports_psutil() -> None:
    offenders = []
    for path in sorted((ROOT / "worker").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "psutil" or n.startswith("psutil.") for n in names):
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"psutil is not a runtime dependency: {offenders}"


def test_make_installs_the_test_extra() -> None:
    # The Makefile's install line is what CI and `make test` get: it must carry the dev extra.
    installs = re.findall(r"pip install -q -e '\.\[([\w,]+)\]'", (ROOT / "Makefile").read_text())
    assert installs, "no editable install line in the Makefile"
    assert all({"dev", "embedded"} <= set(extras.split(",")) for extras in installs)


def test_license_is_the_apache_2_text() -> None:
    text = LICENSE.read_bytes()
    assert hashlib.sha256(text).hexdigest() == APACHE_2_SHA256, "LICENSE must be the Apache License 2.0, verbatim"
    project = _pyproject()["project"]
    assert project["license"] == "Apache-2.0"
    assert "LICENSE" in project["license-files"]
    # PEP 639: with an SPDX license expression, a License :: classifier is an error.
    assert not [c for c in project.get("classifiers", []) if c.startswith("License ::")]


def test_the_version_has_one_source() -> None:
    import worker

    project = _pyproject()["project"]
    assert "version" not in project, "the version lives in worker/__init__.py only"
    assert "version" in project["dynamic"]
    assert _pyproject()["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "worker.__version__"}
    assert str(Version(worker.__version__)) == worker.__version__


def test_the_distribution_name_is_ours_and_every_hint_uses_it() -> None:
    project = _pyproject()["project"]
    assert project["name"] == "sr-run-authority"  # "scenario-runner" on the index is someone else's
    assert project["scripts"]["sr"] == "worker.cli.main:run"
    old = re.compile(r"scenario-runner\[|install\s+['\"]?scenario-runner\b")
    places = [ROOT / "README.md", ROOT / "Makefile", *ROOT.glob("docs/*.md"), *DEPLOY.rglob("*"),
              *(ROOT / "worker").rglob("*.py")]
    hits = [str(p.relative_to(ROOT)) for p in places if p.is_file() and old.search(p.read_text(errors="replace"))]
    assert not hits, f"install hints naming the old distribution: {hits}"
