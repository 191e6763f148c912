"""Moved to :mod:`tests.harness.servers`; kept while test modules still import the old path."""

from tests.harness.servers import TEST_BUCKET, Servers, in_ci, resolve_servers, unavailable, unique
from tests.harness.sr_env import make_topics

__all__ = ["TEST_BUCKET", "Servers", "in_ci", "make_topics", "resolve_servers", "unavailable", "unique"]
