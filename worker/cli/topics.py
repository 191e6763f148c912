"""``sr topics create``: create SR's topics with the worker's Kafka settings (SASL/TLS included)."""

from __future__ import annotations

import argparse
from typing import Any

from worker.errors import InputError
from worker.settings import Settings


def register(sub: Any) -> None:
    """Register the command on ``sub`` (the top-level argparse sub-parsers)."""
    topics = sub.add_parser("topics", help="topic administration").add_subparsers(dest="topics_cmd", required=True)
    p = topics.add_parser("create", help="create SR's topics (idempotent: existing topics are left as they are)")
    p.add_argument("--partitions", type=int, default=4,
                   help="partitions for intents/triggers/ready/status/engine-requests/engine-results")
    p.add_argument("--replication-factor", type=int, default=1,
                   help="replicas per partition (at most the number of brokers)")
    p.add_argument("--config", dest="topic_config", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="topic config for every created topic, e.g. retention.ms=604800000 (repeatable)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the cluster")
    p.set_defaults(handler=cmd_topics_create)


def cmd_topics_create(args: argparse.Namespace) -> int:
    """Create SR's topics if missing (with the worker's Kafka settings, SASL/TLS included);
    prints one line per topic: created, or already existed."""
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
