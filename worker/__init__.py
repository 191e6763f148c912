"""Scenario Runner: the run readiness authority of the data platform.

Layout: ``worker.core`` is the pure core (no I/O); ``worker.adapters`` holds one module per
external system (kafka, avro, postgres, s3); ``worker.runtime`` is the worker loop, lease and
publisher; ``worker.embedded`` starts the local real-server stack; ``worker.cli`` is ``sr``.
"""

__version__ = "0.1.0"
