"""``sr topics create``: create SR's topics with the worker's Kafka settings (SASL/TLS included)."""

from __future__ import annotations

import argparse
from typing import Any

from worker.cli.common import print_document
from worker.cli.options import add_output, resolve_output
from worker.cli.timespec import DURATION_HELP, duration_arg
from worker.errors import InputError
from worker.settings import Settings


def register(sub: Any) -> None:
    """Register the command on ``sub`` (the top-level argparse sub-parsers)."""
    topics = sub.add_parser("topics", help="topic administration").add_subparsers(
        dest="topics_cmd", required=True, help="create: SR's topics, if missing")
    p = topics.add_parser(
        "create", help="create SR's topics (idempotent: existing topics are left as they are)",
        description="Create SR's topics if missing, with the worker's Kafka settings (SR_KAFKA_* SASL/TLS "
                    "included). Here --config is a topic config (KEY=VALUE): give SR's config file before the "
                    "command (sr --config sr.toml topics create) or in SR_CONFIG.",
        epilog="examples:\n  sr topics create\n"
               "  sr topics create --partitions 12 --replication-factor 3 --config min.insync.replicas=2\n"
               "  sr --config sr.toml topics create -o json\n")
    p.add_argument("--partitions", type=int, default=4,
                   help="partitions for intents/triggers/ready/status/engine-requests/engine-results (default 4; "
                        "the DLQ gets 1)")
    p.add_argument("--replication-factor", type=int, default=1,
                   help="replicas per partition (at most the number of brokers)")
    p.add_argument("--config", dest="topic_config", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="topic config for every created topic, e.g. retention.ms=604800000 (repeatable)")
    p.add_argument("--timeout", type=duration_arg(), default=30.0, metavar="DURATION",
                   help=f"how long to wait for the cluster ({DURATION_HELP}; default 30)")
    add_output(p, legacy_json=None)
    p.set_defaults(handler=cmd_topics_create)


def cmd_topics_create(args: argparse.Namespace) -> int:
    """Create SR's topics if missing (with the worker's Kafka settings, SASL/TLS included);
    prints one line per topic: created, or already existed (``-o json``: one document).

    Raises:
        InputError: a malformed ``--config``.
        TopicRefusedError: the broker refused some topics (those it did create are printed).
        KafkaUnavailableError: the cluster did not answer within ``--timeout``.
    """
    from worker.adapters.kafka import TopicRefusedError, TopicSpec
    from worker.runtime.compose import topic_admin

    settings: Settings = args.settings
    config = _topic_config(args.topic_config)
    t = settings.topics
    specs = [TopicSpec(name, args.partitions, args.replication_factor, config)
             for name in (t.intents, t.triggers, t.ready, t.status, t.engine_requests, t.engine_results)]
    specs.append(TopicSpec(t.dlq, 1, args.replication_factor, config))
    try:
        results = topic_admin(settings).ensure(specs, timeout=args.timeout)
    except TopicRefusedError as exc:
        for name in exc.created:
            print(f"topic {name} created")
        for name in exc.existed:
            print(f"topic {name} already existed")
        raise
    doc = {"topics": [{"topic": r.name, "created": r.created, "partitions": r.partitions,
                       "replication_factor": r.replication_factor} for r in results]}

    def human() -> None:
        for result in results:
            print(result.describe())

    print_document(resolve_output(args), doc, human)
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
