"""A worker resolves its output schemas' registry ids before consuming (AvroCodec.preflight)."""

from __future__ import annotations

import pytest

from worker.adapters.avro import AvroCodec
from worker.errors import ConfigError
from worker.runtime.worker import written_subjects
from worker.settings import load_settings


class ScriptedRegistry:
    """A registry that knows some subjects; asking for another is what auto-register off refuses."""

    def __init__(self, known: set[str]) -> None:
        self.known = known
        self.asked: list[str] = []

    def schema_id_for(self, subject: str, schema_json: str) -> int:
        self.asked.append(subject)
        if subject not in self.known:
            raise ConfigError(f"schema not registered under subject {subject!r}")
        return 100 + sorted(self.known).index(subject)

    def get_schema(self, schema_id: int) -> str:  # pragma: no cover - not asked by preflight
        raise AssertionError("preflight only resolves ids")


def test_preflight_resolves_every_written_subject_once_and_caches_it() -> None:
    subjects = written_subjects(load_settings(None, {}))
    assert subjects == {"ReadyEvent": "sr.ready-value", "RunStatusEvent": "sr.run-status-value",
                        "EngineRequest": "sr.engine-requests-value"}
    registry = ScriptedRegistry(set(subjects.values()))
    codec = AvroCodec(registry=registry)
    codec.preflight(subjects)
    codec.preflight(subjects)
    assert sorted(registry.asked) == sorted(subjects.values())  # the second call hit the cache


def test_preflight_stops_on_a_missing_schema_and_is_a_no_op_without_a_registry() -> None:
    registry = ScriptedRegistry({"sr.ready-value"})
    codec = AvroCodec(registry=registry)
    with pytest.raises(ConfigError, match=r"sr\.run-status-value"):
        codec.preflight({"ReadyEvent": "sr.ready-value", "RunStatusEvent": "sr.run-status-value"})
    AvroCodec().preflight({"ReadyEvent": "sr.ready-value"})  # single-object encoding: nothing to resolve
