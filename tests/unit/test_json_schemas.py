"""The JSON Schemas of SR's S3 artifacts (``schemas/json/``) describe exactly what SR writes: every
plan, ledger entry and facts view of the golden fixtures (today's and the frozen v1), of the frozen
runpack and of a fresh in-memory run with instance binding and engine attempts validates; objects
that break the contract do not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from tests.harness.app_world import BUCKET, PREFIX, World
from worker.core.engine import EngineStatus
from worker.core.models import Strategy

from .conftest import REPO

SCHEMAS = REPO / "schemas" / "json"
FIXTURES = REPO / "tests" / "fixtures"


def _validators() -> dict[str, Draft202012Validator]:
    docs = {p.name: json.loads(p.read_text()) for p in SCHEMAS.glob("*.schema.json")}
    registry: Registry[Any] = Registry().with_resources(
        (doc["$id"], Resource.from_contents(doc)) for doc in docs.values())
    for doc in docs.values():
        Draft202012Validator.check_schema(doc)
    return {name.removesuffix(".schema.json"): Draft202012Validator(doc, registry=registry)
            for name, doc in docs.items()}


VALIDATORS = _validators()


def kind_of(key: str) -> str | None:
    if key.endswith("/plan.json"):
        return "plan"
    if "/record/" in key:
        return "ledger-entry"
    if "/facts/" in key:
        return "facts-view"
    return None


def _fixture_objects() -> dict[str, str]:
    objects: dict[str, str] = {}
    for name in ("golden_v1", "golden_v2"):
        for key, text in json.loads((FIXTURES / name / "objects.json").read_text())["objects"].items():
            objects[f"{name}:{key}"] = text
    for path in sorted((FIXTURES / "runpack_v1").rglob("*.json")):
        rel = path.relative_to(FIXTURES / "runpack_v1").as_posix()
        key = "/record/" + rel if rel.startswith("ledger/") else "/" + rel
        objects[f"runpack_v1:{key}"] = path.read_text()
    return objects


def _fresh_run_objects() -> dict[str, str]:
    world = World()
    processor = world.processor()
    ready = world.intent("fresh", outputs=("transactions", "accounts"))
    world.write_complete(ready)
    world.handle(processor, ready)
    engine = world.intent("engine", strategy=Strategy.INVOKE)
    world.handle(processor, engine)
    world.handle_result(processor, world.result(world.engine_requests()[0], EngineStatus.FAILED, detail="exit 3"))
    return {f"fresh:{k}": world.store.read(BUCKET, k).decode() for k in world.store.keys(BUCKET, f"{PREFIX}/")}


OBJECTS = {**_fixture_objects(), **_fresh_run_objects()}


def test_every_artifact_sr_wrote_validates() -> None:
    checked: dict[str, int] = {}
    for key, text in OBJECTS.items():
        kind = kind_of(key)
        if kind is None:
            continue
        errors = [e.message for e in VALIDATORS[kind].iter_errors(json.loads(text))]
        assert errors == [], (key, errors[:3])
        checked[kind] = checked.get(kind, 0) + 1
    assert set(checked) == {"plan", "ledger-entry", "facts-view"} and min(checked.values()) >= 5, checked
    kinds = {json.loads(t)["kind"] for k, t in OBJECTS.items() if kind_of(k) == "ledger-entry"}
    assert {"READY", "WAITING", "ENGINE_REQUESTED", "ENGINE_RESULT", "SUPERSEDED", "TRIGGER"} <= kinds
    formats = {json.loads(t)["format_version"] for k, t in OBJECTS.items() if kind_of(k) == "facts-view"}
    assert formats == {1, 2}


def _one(kind: str, predicate: Any = lambda doc: True) -> dict[str, Any]:
    doc: dict[str, Any] = next(json.loads(t) for k, t in OBJECTS.items() if kind_of(k) == kind
                               and predicate(json.loads(t)))
    return doc


def _v2(doc: dict[str, Any]) -> bool:
    return bool(doc.get("format_version") == 2)


@pytest.mark.parametrize(("kind", "pick", "damage"), [
    ("facts-view", _v2, lambda d: d.pop("outputs")),  # format 2 without its join surface
    ("facts-view", _v2, lambda d: d["receipts"][0].pop("scope")),
    ("facts-view", _v2, lambda d: d["receipts"][0]["bound"].update(colour="red")),
    ("facts-view", lambda d: d["format_version"] == 1, lambda d: d.update(outputs=[])),  # format 1 has none
    ("facts-view", _v2, lambda d: d["receipts"][0].update(digest="ABC")),
    ("plan", lambda d: True, lambda d: d["gates"][0].update(scope=["colour"])),
    ("plan", lambda d: True, lambda d: d.update(format_version=2)),
    ("ledger-entry", lambda d: d["kind"] == "READY", lambda d: d["body"].pop("facts_view_hash")),
    ("ledger-entry", lambda d: d["kind"] == "ENGINE_RESULT", lambda d: d["body"].update(status="MAYBE")),
    ("ledger-entry", lambda d: d["seq"] == 0, lambda d: d.update(prev_hash="0" * 64)),
    ("ledger-entry", lambda d: d["seq"] > 0, lambda d: d.update(extra=True)),
])
def test_artifacts_that_break_the_contract_do_not_validate(kind: str, pick: Any, damage: Any) -> None:
    doc = _one(kind, pick)
    assert VALIDATORS[kind].is_valid(doc)
    damage(doc)
    assert not VALIDATORS[kind].is_valid(doc)


def test_the_schemas_are_listed_in_the_schemas_readme() -> None:
    readme = (REPO / "schemas" / "README.md").read_text()
    for path in SCHEMAS.glob("*.schema.json"):
        assert f"json/{path.name}" in readme, path.name


def test_schema_files_are_where_the_package_ships_them() -> None:
    assert Path(REPO / "worker" / "schemas" / "json").resolve() == SCHEMAS.resolve()
