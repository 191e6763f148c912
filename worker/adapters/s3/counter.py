"""Counting of S3 request attempts by HTTP verb (:class:`RequestCounter`).

S3 requests are the main cost of a run on small machines, so every *attempt* the adapter
sends is counted, retries included: attempts are what the server pays for.
"""

from __future__ import annotations

import threading
from typing import Final, Literal

__all__ = ["VERBS", "RequestCounter", "Verb"]

#: The HTTP verbs S3 requests are counted by (Object Lock reads count as GET, retention
#: writes as PUT, a bucket probe as HEAD).
Verb = Literal["PUT", "GET", "HEAD", "LIST", "DELETE"]
VERBS: Final[tuple[Verb, ...]] = ("PUT", "GET", "HEAD", "LIST", "DELETE")


class RequestCounter:
    """Thread-safe count of S3 request attempts by verb, plus payload bytes.

    Every *attempt* counts (a retried GET counts twice). ``bytes_in`` counts body bytes
    actually read from responses; ``bytes_out`` counts body bytes sent in PUTs.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self.reset()

    def add(self, verb: Verb) -> None:
        """Count one request attempt of ``verb``."""
        with self._lock:
            self._counts[verb] += 1

    def add_bytes(self, *, bytes_in: int = 0, bytes_out: int = 0) -> None:
        """Count payload bytes received / sent."""
        with self._lock:
            self._counts["bytes_in"] += bytes_in
            self._counts["bytes_out"] += bytes_out

    def snapshot(self) -> dict[str, int]:
        """A copy of the counts: keys ``PUT GET HEAD LIST DELETE bytes_in bytes_out``."""
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        """Zero every count."""
        with self._lock:
            self._counts = {verb: 0 for verb in VERBS}
            self._counts["bytes_in"] = 0
            self._counts["bytes_out"] = 0

    @property
    def requests(self) -> int:
        """Total request attempts over all verbs."""
        with self._lock:
            return sum(self._counts[verb] for verb in VERBS)
