"""In-memory implementations of every port in :mod:`worker.app.ports`, shipped for tests.

Like procrastinate's ``InMemoryConnector`` or dramatiq's ``StubBroker``: SR's own unit tests
drive the real application services on these, and so can users testing their integrations.
They keep the semantics the services rely on, not the performance:

* :class:`InMemoryObjectStore` — write-once ``If-None-Match`` PUTs, DRIFT on a different
  payload, byte caps, ETag-pinned ranged reads, listing in UTF-8 key order, injectable faults;
* :class:`InMemoryDatabase` with :class:`InMemoryRunIndex` and :class:`InMemoryLeases` — the
  run index, the outbox (``ON CONFLICT DO NOTHING`` returning the original rows), advisory
  locks per session and the fencing epoch, so a stale holder's write is rejected exactly as
  in Postgres; :meth:`InMemoryLeases.crash` drops a "process"'s sessions (and locks);
* :class:`StubEventSink` — a broker that records what was produced and acknowledges it, with
  injectable delivery failures;
* :class:`ManualClock` — time that moves only when told;
* :class:`RaisingCrashPoints` — crash points that raise :class:`SimulatedCrash` instead of
  killing the process, so a test can "restart" on the same durable state.

All are thread-safe (one lock each); none does I/O.
"""

from __future__ import annotations

from worker.app.testing.broker import SentMessage, StubEventSink
from worker.app.testing.clock import ManualClock, RaisingCrashPoints, SimulatedCrash
from worker.app.testing.database import InMemoryDatabase, InMemoryLease, InMemoryLeases, InMemoryRunIndex
from worker.app.testing.objects import InMemoryObjectStore

__all__ = [
    "InMemoryDatabase",
    "InMemoryLease",
    "InMemoryLeases",
    "InMemoryObjectStore",
    "InMemoryRunIndex",
    "ManualClock",
    "RaisingCrashPoints",
    "SentMessage",
    "SimulatedCrash",
    "StubEventSink",
]
