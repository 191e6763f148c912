"""The generated settings reference covers every setting and is current in docs/operations.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.settings import Settings, Topics
from worker.settings_reference import BEGIN_MARKER, DESCRIPTIONS, END_MARKER, render_reference, replace_reference

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def test_every_setting_has_a_description() -> None:
    names = {name for name in Settings.model_fields if name != "topics"} | {f"topics.{t}" for t in Topics.model_fields}
    missing = sorted(names - set(DESCRIPTIONS))
    assert not missing, f"settings without a description in worker/settings_reference.py: {missing}"
    stale = sorted(set(DESCRIPTIONS) - names)
    assert not stale, f"descriptions of settings that do not exist: {stale}"


def test_the_reference_in_the_docs_is_current() -> None:
    document = OPERATIONS.read_text(encoding="utf-8")
    assert replace_reference(document) == document, \
        "docs/operations.md is stale: run .venv/bin/python -m worker.settings_reference --write docs/operations.md"


def test_every_setting_has_a_row_with_its_variable() -> None:
    table = render_reference()
    for name in Settings.model_fields:
        if name not in {"topics", "kafka_extra"}:
            assert f"| `{name}` |" in table
    assert "`SR_TOPICS__ENGINE_RESULTS`" in table and "`SR_KAFKA_<PROPERTY>`" in table


def test_replacing_needs_the_markers() -> None:
    with pytest.raises(ValueError, match="markers"):
        replace_reference("no markers here")
    assert replace_reference(f"a\n{BEGIN_MARKER}\nold\n{END_MARKER}\nb").startswith(f"a\n{BEGIN_MARKER}\n| Setting")
