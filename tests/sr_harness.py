"""Moved to :mod:`tests.harness` (``sr_env``, ``kafka``, ``workers``, ``probes``); kept while test
modules still import the old path."""

from tests.harness.kafka import produce_raw, read_topic, submit
from tests.harness.paths import EXAMPLE_POLICY, REPO
from tests.harness.probes import wait_for
from tests.harness.sr_env import SREnv, build_env, make_intent, replace_intent
from tests.harness.workers import WorkerThread, start_worker_process, stop_process

__all__ = [
    "EXAMPLE_POLICY",
    "REPO",
    "SREnv",
    "WorkerThread",
    "build_env",
    "make_intent",
    "produce_raw",
    "read_topic",
    "replace_intent",
    "start_worker_process",
    "stop_process",
    "submit",
    "wait_for",
]
