"""Operator sub-commands: ``run``, ``submit``, ``status``, ``topics create``, ``db migrate``."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.table import Table

from worker.errors import InputError
from worker.settings import Settings


def register(sub: Any) -> None:
    """Register the operator sub-commands on ``sub`` (argparse sub-parsers)."""
    p = sub.add_parser("run", help="run the worker (consumer group over intents and triggers)")
    p.add_argument("--no-migrate", action="store_true", help="do not apply database migrations at start")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("submit", help="publish a JSON intent (file or - for stdin) as Avro to the intents topic")
    p.add_argument("file", help="JSON file with one intent object or an array of intents; - reads stdin")
    p.set_defaults(handler=cmd_submit)

    p = sub.add_parser("status", help="show a run's status and its ledger timeline")
    p.add_argument("run_id")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_status)

    topics = sub.add_parser("topics", help="topic administration").add_subparsers(dest="topics_cmd", required=True)
    p = topics.add_parser("create", help="create SR's topics (idempotent: existing topics are left as they are)")
    p.add_argument("--partitions", type=int, default=4, help="partitions for intents/triggers/ready/status")
    p.add_argument("--replication-factor", type=int, default=1,
                   help="replicas per partition (at most the number of brokers)")
    p.add_argument("--config", dest="topic_config", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="topic config for every created topic, e.g. retention.ms=604800000 (repeatable)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the cluster")
    p.set_defaults(handler=cmd_topics_create)

    db = sub.add_parser("db", help="database administration").add_subparsers(dest="db_cmd", required=True)
    p = db.add_parser("migrate", help="apply SR's SQL migrations (idempotent)")
    p.set_defaults(handler=cmd_db_migrate)


def _settings(args: argparse.Namespace) -> Settings:
    settings: Settings = args.settings
    return settings


# ----------------------------------------------------------------------------- run
def cmd_run(args: argparse.Namespace) -> int:
    """Run the worker until SIGINT/SIGTERM; a signal finishes in-flight work and commits."""
    from worker.logs import configure_logging
    from worker.runtime.compose import load_policy_file
    from worker.runtime.worker import Worker

    configure_logging()
    settings = _settings(args)
    policy = load_policy_file(settings.policy_file)
    worker = Worker(settings, policy, migrate_db=not args.no_migrate)

    def _stop(signum: int, frame: FrameType | None) -> None:
        worker.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    worker.run()
    return 0


# ----------------------------------------------------------------------------- submit
def cmd_submit(args: argparse.Namespace) -> int:
    """Encode JSON intents to Avro and produce them (keyed by run_id); prints run ids."""
    from worker.core.identity import run_id_of
    from worker.core.models import parse_intent
    from worker.runtime.compose import event_producer, make_codec

    settings = _settings(args)
    raw = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError(f"intent file is not JSON: {exc}") from exc
    items = doc if isinstance(doc, list) else [doc]
    codec = make_codec(settings)
    subject = f"{settings.topics.intents}-value"
    intents = [parse_intent(item) for item in items]
    with event_producer(settings) as producer:
        futures = []
        for intent in intents:
            run_id = run_id_of(intent)
            futures.append((run_id, producer.send(settings.topics.intents, key=run_id.encode(),
                                                  value=codec.encode_intent(intent, subject=subject))))
        for run_id, fut in futures:
            where = fut.result(60)
            print(json.dumps({"run_id": run_id, "topic": where.topic, "partition": where.partition,
                              "offset": where.offset}))
    return 0


# ----------------------------------------------------------------------------- status
def cmd_status(args: argparse.Namespace) -> int:
    """Print a run's index row and its verified S3 ledger timeline. Exit 1 if unknown."""
    from worker.app.truth import TruthStore
    from worker.core.keys import run_keys
    from worker.core.models import RunIntent, datetime_from_millis
    from worker.runtime.compose import object_store, run_index

    settings = _settings(args)
    console = Console()
    with run_index(settings) as index:
        row = index.get(args.run_id)
    if row is None:
        print(f"sr: run {args.run_id} not found", file=sys.stderr)
        return 1
    intent = RunIntent.from_avro(row.intent)
    keys = run_keys(settings.s3_prefix, intent.tenant_id, intent.namespace, row.run_id)
    with object_store(settings) as store:
        entries = TruthStore(store, settings.s3_bucket, settings.s3_prefix).read_ledger(keys) \
            if row.ledger_seq >= 0 else ()
    timeline = [
        {"seq": e.seq, "kind": e.kind.value, "at": datetime_from_millis(e.at_ms).isoformat(),
         "epoch": e.lease_epoch, "body": {k: v for k, v in e.body.items() if k != "intent"}}
        for e in entries
    ]
    summary = {
        "run_id": row.run_id, "status": row.status, "reason_code": row.reason_code,
        "tenant_id": row.tenant_id, "namespace": row.namespace, "scenario_id": row.scenario_id,
        "plan_hash": row.plan_hash, "facts_view_hash": row.facts_view_hash, "lease_epoch": row.lease_epoch,
        "ledger": timeline,
    }
    if args.json:
        print(json.dumps(summary, default=str))
        return 0
    console.print(f"[bold]{row.run_id}[/] {row.status} {row.reason_code or ''}", highlight=False)
    table = Table("seq", "kind", "at", "epoch", "details")
    for item in timeline:
        body: dict[str, object] = item["body"]  # type: ignore[assignment]
        details = ", ".join(f"{k}={v}" for k, v in body.items())
        table.add_row(str(item["seq"]), str(item["kind"]), str(item["at"]), str(item["epoch"]), details)
    console.print(table)
    return 0


# ----------------------------------------------------------------------------- admin
def cmd_topics_create(args: argparse.Namespace) -> int:
    """Create SR's topics if missing (with the worker's Kafka settings, SASL/TLS included);
    prints one line per topic: created, or already existed."""
    from worker.adapters.kafka import TopicAdmin, TopicRefusedError, TopicSpec
    from worker.runtime.worker import kafka_config

    settings = _settings(args)
    config = _topic_config(args.topic_config)
    t = settings.topics
    specs = [TopicSpec(name, args.partitions, args.replication_factor, config)
             for name in (t.intents, t.triggers, t.ready, t.status)]
    specs.append(TopicSpec(t.dlq, 1, args.replication_factor, config))
    try:
        results = TopicAdmin(kafka_config(settings)).ensure(specs, timeout=args.timeout)
    except TopicRefusedError as exc:
        for name in exc.created:
            print(f"topic {name} created")
        for name in exc.existed:
            print(f"topic {name} already existed")
        raise
    for result in results:
        print(result.describe())
    return 0


def _topic_config(pairs: list[str]) -> dict[str, str]:
    """``--config key=value`` arguments as a dict.

    Raises:
        InputError: an argument is not ``key=value`` with a non-empty key.
    """
    config: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--config expects key=value, got {pair!r}")
        config[key.strip()] = value
    return config


def cmd_db_migrate(args: argparse.Namespace) -> int:
    """Apply pending migrations; prints the ones applied."""
    from worker.adapters.postgres import migrate

    applied = migrate(_settings(args).pg_dsn.get_secret_value())
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0
