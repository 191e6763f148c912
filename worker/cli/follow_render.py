"""How ``sr follow`` prints a record: one dict per event, as a JSON line or an aligned line."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.adapters.avro import AvroCodec
    from worker.app.ports import Record
    from worker.client import VerifiedFact
    from worker.settings import Settings

__all__ = ["Printer", "describe", "fact_row"]

#: Columns of the table output per kind of row (the rest is in -o jsonl).
_TABLE: dict[str, tuple[str, ...]] = {
    "ready": ("event_type", "run_id", "facts_view_hash", "supersedes_facts_view_hash"),
    "fact": ("event_type", "run_id", "facts_view_hash", "verified", "outputs"),
    "status": ("status", "run_id", "reason_code", "detail"),
    "engine_request": ("record", "run_id", "attempt_no", "attempt_id"),
    "engine_result": ("record", "run_id", "status", "attempt_id", "detail"),
    "dlq": ("error_class", "source", "key", "bytes", "error_message"),
    "undecodable": ("record", "error"),
}


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _where(record: Record) -> dict[str, Any]:
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


def describe(codec: AvroCodec, settings: Settings, record: Record) -> dict[str, Any]:  # noqa: PLR0911 - per topic
    """The printable row of one record of SR's topics (never raises for bad bytes: a record
    that does not decode becomes an ``undecodable`` row naming the error)."""
    from worker.errors import SRError

    topics = settings.topics
    row: dict[str, Any] = {"_where": _where(record)}
    try:
        if record.topic == topics.dlq:
            headers = {k: v.decode("utf-8", "replace") for k, v in record.headers}
            return {**row, "_kind": "dlq", "error_class": headers.get("sr-error-class"),
                    "error_message": headers.get("sr-error-message"),
                    "source": f"{headers.get('sr-source-topic')}[{headers.get('sr-source-partition')}]"
                              f"@{headers.get('sr-source-offset')}",
                    "key": (record.key or b"").decode("utf-8", "replace"), "bytes": len(record.value or b""),
                    "value_b64": base64.b64encode((record.value or b"")[:4096]).decode("ascii")}
        value = record.value or b""
        if record.topic == topics.ready:
            return {**row, "_kind": "ready", **codec.decode_ready(value).model_dump(mode="json")}
        if record.topic == topics.status:
            return {**row, "_kind": "status", **codec.decode_status(value).model_dump(mode="json")}
        if record.topic == topics.engine_requests:
            return {**row, "_kind": "engine_request", "record": "EngineRequest",
                    **codec.decode_engine_request(value).model_dump(mode="json")}
        if record.topic == topics.engine_results:
            return {**row, "_kind": "engine_result", "record": "EngineResult",
                    **codec.decode_engine_result(value).model_dump(mode="json")}
    except SRError as exc:
        return {**row, "_kind": "undecodable", "record": f"{record.topic}[{record.partition}]@{record.offset}",
                "error": f"{exc.code}: {exc}"}
    return {**row, "_kind": "undecodable", "record": record.topic, "error": "not one of SR's topics"}


def fact_row(fact: VerifiedFact) -> dict[str, Any]:
    """The printable row of a verified fact (``sr follow ready --verify``)."""
    view = fact.facts_view
    row: dict[str, Any] = {"_where": _where(fact.record), "_kind": "fact",
                           **fact.event.model_dump(mode="json"), "verified": view is not None}
    if view is not None:
        row["facts_view"] = view.model_dump(mode="json")
        row["outputs"] = ",".join(o.output_id for o in view.outputs) or "-"
    return row


class Printer:
    """Writes rows to stdout as JSON lines or aligned table lines (flushed per row), or, for
    ``json``, collects them and prints one JSON array at :meth:`close`."""

    def __init__(self, output: str) -> None:
        self.output = output
        self._rows: list[Any] = []

    def emit(self, row: dict[str, Any]) -> None:
        """Print one row (``json``: keep it for :meth:`close`)."""
        doc = _jsonable({k: v for k, v in row.items() if k != "_kind"})
        if self.output == "json":
            self._rows.append(doc)
            return
        if self.output == "jsonl":
            print(json.dumps(doc, sort_keys=True), flush=True)
            return
        columns = _TABLE.get(str(row.get("_kind")), ())
        cells = [str(row.get(c) if row.get(c) is not None else "-") for c in columns]
        print("  ".join(cell[:100] for cell in cells), flush=True)

    def close(self) -> None:
        """End the output: ``json`` prints the collected rows as one array; the others have
        printed everything already."""
        if self.output == "json":
            print(json.dumps(self._rows, sort_keys=True), flush=True)
            self._rows = []
