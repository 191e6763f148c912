"""The layering rules of docs/architecture.md, checked on the source tree (no imports run)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

WORKER = Path(__file__).resolve().parents[2] / "worker"
SDKS = ("confluent_kafka", "boto3", "botocore", "psycopg", "psycopg_pool", "obstore", "mypy_boto3_s3")
SQL = re.compile(r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+TABLE)\b",
                 re.IGNORECASE | re.DOTALL)
MAX_LINES = 600


def _modules() -> list[Path]:
    return sorted(WORKER.rglob("*.py"))


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _layer(path: Path) -> str:
    return path.relative_to(WORKER).parts[0]


def _starts(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(WORKER)))
def test_sdks_are_imported_only_by_adapters_and_the_dev_stack(path: Path) -> None:
    if _layer(path) in ("adapters", "embedded"):
        return
    assert not [n for n in _imports(path) if _starts(n, SDKS)]


@pytest.mark.parametrize("path", [p for p in _modules() if _layer(p) == "core"], ids=lambda p: p.name)
def test_the_core_is_pure(path: Path) -> None:
    inner = [n for n in _imports(path) if n.startswith("worker.")]
    assert all(_starts(n, ("worker.core", "worker.errors")) for n in inner), inner


@pytest.mark.parametrize("path", [p for p in _modules() if _layer(p) == "app"],
                         ids=lambda p: str(p.relative_to(WORKER)))
def test_the_application_layer_depends_only_on_core_and_its_ports(path: Path) -> None:
    inner = [n for n in _imports(path) if n.startswith("worker.")]
    assert all(_starts(n, ("worker.core", "worker.app", "worker.errors", "worker.logs")) for n in inner), inner


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(WORKER)))
def test_sql_lives_only_in_the_postgres_adapter(path: Path) -> None:
    if path.is_relative_to(WORKER / "adapters" / "postgres"):
        return
    strings = [n.value for n in ast.walk(ast.parse(path.read_text()))
               if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert not [s for s in strings if SQL.search(s)]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(WORKER)))
def test_modules_stay_small(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_the_checks_see_the_tree() -> None:
    layers = {_layer(p) for p in _modules() if len(p.relative_to(WORKER).parts) > 1}
    assert {"core", "app", "adapters", "runtime", "cli", "embedded"} <= layers
    assert any(_starts(n, SDKS) for p in (WORKER / "adapters").rglob("*.py") for n in _imports(p))
