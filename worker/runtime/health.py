"""The worker's HTTP health surface (contract §7): ``/healthz``, ``/readyz``, ``/metrics``.

* :class:`HealthServer` — a small threaded HTTP server on its own daemon thread:
  ``/healthz`` (liveness: 200 while the process serves and, given a
  :class:`~worker.runtime.heartbeat.Heartbeat`, while the poll loop keeps turning; 503 with
  ``{"alive": false, "loop_stalled_seconds": ...}`` once it stalled longer than its timeout),
  ``/readyz`` (readiness: every check
  passed within ``check_timeout`` seconds, else 503 naming the failing checks) and
  ``/metrics`` (Prometheus text of a :class:`~worker.runtime.metrics.Metrics`).
* Checks are callables that return ``None`` when healthy and raise an
  :class:`~worker.errors.SRError` otherwise. Each system's check lives in its adapter
  (:func:`~worker.adapters.kafka.health.kafka_check`,
  :func:`~worker.adapters.postgres.health.postgres_check`,
  :func:`~worker.adapters.s3.health.s3_check`); :func:`standard_checks` composes them and
  :func:`flag_check` covers in-process components. Checks do no I/O until called, use
  short timeouts and no retries, and never put a secret into an error message.

Units: seconds.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from pydantic import SecretStr

from worker.adapters.kafka import KafkaConfig
from worker.adapters.kafka.health import kafka_check
from worker.adapters.postgres.health import postgres_check
from worker.adapters.s3 import ObjectStore, S3Config
from worker.adapters.s3.health import s3_check
from worker.errors import HealthServerError, NotReadyError, SRError
from worker.runtime.heartbeat import Heartbeat
from worker.runtime.metrics import Metrics

__all__ = ["Check", "HealthServer", "flag_check", "standard_checks"]

log = logging.getLogger("sr.observability")

_MAX_ERROR_CHARS: Final = 200
_CHECK_NAME_RE: Final = re.compile(r"[a-z0-9_]{1,32}")

#: A readiness check: returns ``None`` when healthy, raises (preferably an ``SRError``) otherwise.
Check = Callable[[], None]


def _short_error(exc: BaseException) -> str:
    """A one-line, bounded description for /readyz.

    Only SR's own errors contribute their message (the adapters guarantee it holds no
    secret); anything else is reported by class name alone.
    """
    text = f"{exc.code}: {exc}" if isinstance(exc, SRError) else type(exc).__name__
    text = " ".join(text.split())
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 3] + "..."


def flag_check(flag: threading.Event, what: str) -> Check:
    """A readiness check that passes once ``flag`` is set (e.g. ``Worker.ready``).

    The returned check raises:
        NotReadyError: ``flag`` is not set yet (``what`` says which component).
    """

    def check() -> None:
        if not flag.is_set():
            raise NotReadyError(f"{what} not ready")

    return check


def standard_checks(kafka_config: KafkaConfig, pg_dsn: SecretStr | str, store: ObjectStore | S3Config,
                    bucket: str) -> dict[str, Check]:
    """The ``kafka``, ``postgres`` and ``s3`` checks with their default timeouts."""
    return {
        "kafka": kafka_check(kafka_config),
        "postgres": postgres_check(pg_dsn),
        "s3": s3_check(store, bucket),
    }


class _CheckRunner:
    """Runs one check on a daemon thread, at most one execution in flight.

    A hung check (e.g. a black-holed TCP connection) therefore costs one thread, not one
    per probe: later evaluations wait on the same execution.
    """

    def __init__(self, name: str, check: Check) -> None:
        self.name = name
        self.check = check
        self._lock = threading.Lock()
        self._future: Future[None] | None = None

    def submit(self) -> Future[None]:
        with self._lock:
            if self._future is None or self._future.done():
                future: Future[None] = Future()
                future.set_running_or_notify_cancel()
                threading.Thread(target=self._run, args=(future,), name=f"sr-check-{self.name}",
                                 daemon=True).start()
                self._future = future
            return self._future

    def _run(self, future: Future[None]) -> None:
        try:
            self.check()
        except BaseException as exc:  # noqa: BLE001 - reported as the check's failure
            future.set_exception(exc)
        else:
            future.set_result(None)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: HealthServer


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "sr-worker"
    sys_version = ""
    timeout = 10  # seconds a client may take to send its request

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _serve(self, *, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        owner = self.server.owner
        try:
            if path == "/healthz":
                status, ctype, body = owner.liveness()
            elif path == "/readyz":
                ready, results = owner.readiness()
                status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
                ctype, body = "application/json", json.dumps(results, sort_keys=True).encode()
            elif path == "/metrics":
                status, ctype, body = HTTPStatus.OK, owner.metrics.content_type, owner.metrics.render()
            else:
                status, ctype, body = HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found\n"
        except Exception:
            log.exception("health endpoint %s failed", path)
            status, ctype, body = HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", b"internal error\n"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http " + format, *args)


class HealthServer:
    """``/healthz``, ``/readyz`` and ``/metrics`` on a daemon thread.

    No network I/O in ``__init__``: the socket is bound by :meth:`start`. Use as a context
    manager or call :meth:`start` / :meth:`stop`.

    ``/readyz`` runs every check concurrently (one daemon thread per check, at most one
    execution of a check in flight) and waits at most ``check_timeout`` seconds; a check
    still running then counts as failed ("timed out"). The result is cached for
    ``cache_seconds`` and computed by one request at a time, so aggressive probing never
    multiplies the load on the servers. The body is a JSON object ``{check: "ok" | error}``
    — errors are short and never hold a secret.

    Args:
        host: interface to bind (``127.0.0.1`` by default in settings; ``0.0.0.0`` in a pod).
        port: TCP port; 0 picks a free one (see :attr:`port` after :meth:`start`).
        metrics: what ``/metrics`` renders.
        checks: name -> check; names are lower-case identifiers (``kafka``, ``postgres``, ``s3``).
        check_timeout: seconds ``/readyz`` waits for the checks.
        cache_seconds: seconds a readiness result is reused.
        heartbeat: the poll loop's heartbeat; ``None`` = ``/healthz`` is 200 while serving.

    Raises:
        ValueError: a bad check name or a non-positive timeout.
    """

    def __init__(self, host: str, port: int, *, metrics: Metrics, checks: Mapping[str, Check],
                 check_timeout: float = 2.0, cache_seconds: float = 1.0, heartbeat: Heartbeat | None = None) -> None:
        if check_timeout <= 0 or cache_seconds < 0:
            raise ValueError("check_timeout must be > 0 and cache_seconds >= 0")
        for name in checks:
            if not _CHECK_NAME_RE.fullmatch(name):
                raise ValueError(f"check name {name!r} must match {_CHECK_NAME_RE.pattern}")
        self.host = host
        self._port = port
        self.metrics = metrics
        self.heartbeat = heartbeat
        self.check_timeout = check_timeout
        self.cache_seconds = cache_seconds
        self._runners = [_CheckRunner(name, check) for name, check in checks.items()]
        self._checks = dict(checks)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._life = threading.Lock()
        self._eval_lock = threading.Lock()
        self._cached: tuple[float, bool, dict[str, str]] | None = None
        self._last_failing: frozenset[str] | None = None
        self._stall_logged = False

    def liveness(self) -> tuple[HTTPStatus, str, bytes]:
        """``/healthz``: status, content type and body (503 once the loop's heartbeat is overdue)."""
        if self.heartbeat is None or self.heartbeat.alive():
            return HTTPStatus.OK, "text/plain; charset=utf-8", b"ok\n"
        stalled = round(self.heartbeat.age(), 1)
        if not self._stall_logged:
            self._stall_logged = True
            log.error("poll loop stalled; /healthz answers 503 so the worker is restarted",
                      extra={"loop_stalled_seconds": stalled, "liveness_timeout": self.heartbeat.timeout})
        body = json.dumps({"alive": False, "loop_stalled_seconds": stalled}).encode()
        return HTTPStatus.SERVICE_UNAVAILABLE, "application/json", body

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> HealthServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Bind and start serving on a daemon thread (idempotent).

        Raises:
            HealthServerError: the address cannot be bound (port in use, bad host).
        """
        with self._life:
            if self._server is not None:
                return
            try:
                server = _Server((self.host, self._port), _Handler)
            except OSError as exc:
                raise HealthServerError(f"cannot serve health endpoints on {self.host}:{self._port}: "
                                        f"{exc.strerror or exc}") from exc
            server.owner = self
            self._server = server
            self._port = int(server.server_address[1])
            self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                            name="sr-health-http", daemon=True)
            self._thread.start()
            log.info("health endpoints listening", extra={"host": self.host, "port": self._port})

    def stop(self) -> None:
        """Stop serving, close the socket and release the checks' clients (idempotent)."""
        with self._life:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5.0)
        for check in self._checks.values():
            close = getattr(check, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:
                    log.debug("closing a readiness check failed", exc_info=True)

    @property
    def port(self) -> int:
        """The bound port (the requested one before :meth:`start`)."""
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` of the server."""
        host = "127.0.0.1" if self.host in {"", "0.0.0.0"} else self.host  # noqa: S104 - only formatting
        return f"http://{host}:{self._port}"

    # ------------------------------------------------------------------ readiness
    def readiness(self) -> tuple[bool, dict[str, str]]:
        """Evaluate the checks (or reuse a result younger than ``cache_seconds``).

        Returns:
            ``(all passed, {check name: "ok" or a short error})``.
        """
        with self._eval_lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self.cache_seconds:
                return self._cached[1], dict(self._cached[2])
            ready, results = self._evaluate()
            self._cached = (time.monotonic(), ready, results)
            self._log_transition(results)
            return ready, dict(results)

    def _evaluate(self) -> tuple[bool, dict[str, str]]:
        futures = {runner.name: runner.submit() for runner in self._runners}
        wait_futures(list(futures.values()), timeout=self.check_timeout)
        results: dict[str, str] = {}
        for name, future in futures.items():
            if not future.done():
                results[name] = f"timed out after {self.check_timeout:g} s"
                continue
            exc = future.exception()
            results[name] = "ok" if exc is None else _short_error(exc)
        return all(v == "ok" for v in results.values()), results

    def _log_transition(self, results: Mapping[str, str]) -> None:
        failing = frozenset(name for name, value in results.items() if value != "ok")
        if failing == self._last_failing:
            return
        if failing:
            log.warning("not ready", extra={"failing": {n: results[n] for n in sorted(failing)}})
        elif self._last_failing is not None:
            log.info("ready again")
        self._last_failing = failing

