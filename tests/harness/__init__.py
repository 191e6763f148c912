"""The test harness: support code shared by the test suites and the benchmarks (``bench/``).

* :mod:`tests.harness.servers` — the real servers (env > Docker > embedded) and :class:`Servers`.
* :mod:`tests.harness.sr_env` — one isolated SR world (:class:`SREnv`, :func:`build_env`) and intents.
* :mod:`tests.harness.evidence` — the one evidence writer (gate bundles through an object sink).
* :mod:`tests.harness.kafka` — reading SR's topics, producing intents and raw bytes, group offsets.
* :mod:`tests.harness.engine` — engine requests as SR sends them (for the reference engine's tests).
* :mod:`tests.harness.workers` — workers on a thread and as ``sr run`` subprocesses (:class:`WorkerProc`).
* :mod:`tests.harness.probes` — bounded polling, S3 listings, Postgres locks and counts.
* :mod:`tests.harness.app_world` — an SR world made of the in-memory ports (no servers).
* :mod:`tests.harness.paths` — the repository root and the example policy.
* :mod:`tests.harness.faultproxy` / :mod:`tests.harness.http_capture` — a TCP fault proxy, a one-shot HTTP capture.

Importing the package imports none of them.
"""
