"""Pure parts of the Postgres adapter (no server): named queries, error translation, libpq
parameters, the pool's I/O-free checks, and conformance of RunIndex / LeaseManager / Lease to
the application ports."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import psycopg
import psycopg.errors
import pytest
from pydantic import SecretStr

from worker.adapters.postgres import (
    ConnectionPool,
    Lease,
    LeaseManager,
    PgConfig,
    Query,
    RoundTripCounter,
    RunIndex,
    connect,
    execute,
    load_migrations,
    load_queries,
    query,
    translate,
)
from worker.adapters.postgres.config import KEEPALIVE_PARAMS, connect_params
from worker.adapters.postgres.queries import parse_queries
from worker.app import ports
from worker.errors import PostgresError, PostgresUnavailableError, RetryableError

PACKAGE = Path(__file__).resolve().parents[2] / "worker" / "adapters" / "postgres"
SQL = PACKAGE / "sql" / "queries.sql"


def config(dsn: str = "host=127.0.0.1 port=1 dbname=sr user=sr password=hunter2", **kw: Any) -> PgConfig:
    return PgConfig(dsn=SecretStr(dsn), **kw)


# ----------------------------------------------------------------------------- named queries
def test_every_block_of_queries_sql_is_parsed() -> None:
    text = SQL.read_text("utf-8")
    declared = re.findall(r"^--\s*name:\s*(\S+)\s*$", text, re.MULTILINE)
    loaded = load_queries()
    assert list(loaded) == declared  # every block, in file order, none lost or merged
    assert len(set(declared)) == len(declared)
    for name, q in loaded.items():
        assert q.name == name
        body = q.sql.decode()
        assert "-- name:" not in body
        assert not body.rstrip().endswith(";")
        code = "\n".join(line.split("--", 1)[0] for line in body.splitlines())
        assert code.strip(), f"{name} has no SQL"
        assert ";" not in code, f"{name} holds more than one statement (one block = one round trip)"


def test_every_block_is_used_and_every_used_name_exists() -> None:
    used: set[str] = set()
    for module in PACKAGE.glob("*.py"):
        used |= set(re.findall(r"""(?:query|_run)\(\s*["']([a-z_]+)["']""", module.read_text("utf-8")))
    used.add("ping")  # the readiness probe in worker/adapters/postgres/health.py
    assert used == set(load_queries())


def test_query_by_name_and_unknown_name() -> None:
    assert query("get_run").name == "get_run"
    assert b"FROM sr_runs" in query("get_run").sql
    with pytest.raises(PostgresError, match="no statement named 'no_such_query'"):
        query("no_such_query")


def test_parse_queries_ignores_the_header_and_strips_the_semicolon() -> None:
    parsed = parse_queries("-- header\n-- more\n\n-- name: a\nSELECT 1;\n\n-- name: b_2\n-- why\nSELECT 2\n")
    assert parsed == {"a": Query("a", b"SELECT 1"), "b_2": Query("b_2", b"-- why\nSELECT 2")}


@pytest.mark.parametrize("text", [
    "-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n",  # duplicated
    "-- name: a\n\n-- name: b\nSELECT 2;\n",  # empty
    "-- name: a\n;\n",  # only a semicolon
])
def test_parse_queries_rejects_duplicated_or_empty_blocks(text: str) -> None:
    with pytest.raises(PostgresError, match="duplicated or empty"):
        parse_queries(text)


def _where_part(sql: bytes, start: str, end: str) -> str:
    text = sql.decode()
    body = text[text.index(start):text.index(end)]
    return " ".join(body.split())


def test_prune_count_and_prune_delete_select_the_same_rows() -> None:
    count = _where_part(query("prune_count").sql, "FROM sr_publications AS p", "GROUP BY")
    delete = _where_part(query("prune_delete").sql, "FROM sr_publications AS p", "ORDER BY")
    assert count == delete
    assert "published_at IS NOT NULL" in count


def test_migrations_are_versioned_files_in_order() -> None:
    names = [m.name for m in load_migrations()]
    assert names == sorted(names) and names[0] == "0001_init"
    assert "queries" not in " ".join(names)


# ----------------------------------------------------------------------------- error translation
@pytest.mark.parametrize(("exc", "expected", "retryable"), [
    (psycopg.OperationalError("server closed the connection unexpectedly\nThis probably means..."),
     PostgresUnavailableError, True),
    (psycopg.InterfaceError("the connection is closed"), PostgresUnavailableError, True),
    (psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), PostgresUnavailableError, True),
    (psycopg.errors.SerializationFailure("could not serialize access"), PostgresUnavailableError, True),
    (psycopg.errors.UniqueViolation("duplicate key value"), PostgresError, False),
    (psycopg.errors.CheckViolation("new row violates check constraint"), PostgresError, False),
    (psycopg.ProgrammingError("syntax error"), PostgresError, False),
])
def test_translate(exc: psycopg.Error, expected: type[PostgresError], retryable: bool) -> None:
    err = translate(exc, "get_run")
    assert type(err) is expected
    assert isinstance(err, RetryableError) is retryable
    message = str(err)
    assert message.startswith(f"get_run: {type(exc).__name__}")
    assert "\n" not in message  # first line only
    if exc.sqlstate:
        assert f"[{exc.sqlstate}]" in message


def test_a_missing_table_says_how_to_create_it() -> None:
    err = translate(psycopg.errors.UndefinedTable('relation "sr_runs" does not exist'), "get_run")
    assert type(err) is PostgresError and not isinstance(err, RetryableError)
    assert str(err).endswith("(is the database migrated? run `sr db migrate`)")


class _FakeCursor:
    def __init__(self, outcome: BaseException | list[dict[str, Any]] | None) -> None:
        self._outcome = outcome
        self.description: Any = None
        self.sent: list[tuple[bytes, Any]] = []

    def __enter__(self) -> _FakeCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def execute(self, sql: bytes, params: Any) -> None:
        self.sent.append((sql, params))
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        if self._outcome is not None:
            self.description = ["col"]

    def fetchall(self) -> list[dict[str, Any]]:
        assert isinstance(self._outcome, list)
        return self._outcome


class _FakeConnection:
    def __init__(self, outcome: BaseException | list[dict[str, Any]] | None) -> None:
        self.cursor_obj = _FakeCursor(outcome)

    def cursor(self, row_factory: Any = None) -> _FakeCursor:
        return self.cursor_obj


def test_execute_counts_observes_and_returns_rows() -> None:
    seen: list[float] = []
    counter = RoundTripCounter(on_query=seen.append)
    conn: Any = _FakeConnection([{"ok": 1}])
    assert execute(conn, query("ping"), {"a": 1}, counter) == [{"ok": 1}]
    assert conn.cursor_obj.sent == [(query("ping").sql, {"a": 1})]
    assert execute(_FakeConnection(None), query("ping"), None, counter) == []  # type: ignore[arg-type]
    assert counter.snapshot() == 2 and len(seen) == 2 and all(s >= 0 for s in seen)


@pytest.mark.parametrize(("raised", "expected"), [
    (psycopg.OperationalError("connection lost"), PostgresUnavailableError),
    (psycopg.errors.UniqueViolation("duplicate key"), PostgresError),
])
def test_execute_translates_and_still_counts(raised: psycopg.Error, expected: type[PostgresError]) -> None:
    seen: list[float] = []
    counter = RoundTripCounter(on_query=seen.append)
    with pytest.raises(expected, match=r"^mark_published: ") as info:
        execute(_FakeConnection(raised), query("mark_published"), {}, counter)  # type: ignore[arg-type]
    assert type(info.value) is expected
    assert info.value.__cause__ is raised
    assert counter.snapshot() == 1 and len(seen) == 1


def test_execute_does_not_translate_non_database_errors() -> None:
    with pytest.raises(KeyError):
        execute(_FakeConnection(KeyError("x")), query("ping"))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- libpq parameters
def test_connect_params() -> None:
    params = connect_params(config(connect_timeout=2.2, statement_timeout=1.5), keepalives=True,
                            with_statement_timeout=True)
    assert params["connect_timeout"] == 3
    assert params["application_name"] == "scenario-runner"
    assert params["options"] == "-c statement_timeout=1500"
    assert {k: params[k] for k in KEEPALIVE_PARAMS} == KEEPALIVE_PARAMS
    # keepalives: 5 s idle + 3 probes every 2 s = a dead peer noticed within ~11 s
    assert KEEPALIVE_PARAMS["keepalives_idle"] + KEEPALIVE_PARAMS["keepalives_count"] * KEEPALIVE_PARAMS[
        "keepalives_interval"] == 11


def test_connect_params_keep_the_dsn_s_own_settings() -> None:
    cfg = config("host=h dbname=d application_name=mine options='-c search_path=sr'", connect_timeout=0.1)
    params = connect_params(cfg, keepalives=False, with_statement_timeout=True)
    assert "application_name" not in params
    assert params["options"] == "-c search_path=sr -c statement_timeout=30000"
    assert params["connect_timeout"] == 1
    assert "keepalives" not in params
    assert "options" not in connect_params(cfg, keepalives=False, with_statement_timeout=False)


def test_an_invalid_dsn_is_reported_without_quoting_it() -> None:
    cfg = config("host=h password='s3cret-value")  # unterminated quote
    with pytest.raises(PostgresError) as info:
        connect_params(cfg, keepalives=False, with_statement_timeout=True)
    assert "s3cret" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(PostgresError) as info2:
        connect(cfg)
    assert "s3cret" not in str(info2.value) and not isinstance(info2.value, RetryableError)


def test_connecting_to_a_closed_port_is_retryable_and_hides_the_password() -> None:
    with pytest.raises(PostgresUnavailableError, match=r"^cannot connect to Postgres: ") as info:
        connect(config(connect_timeout=1))
    assert "hunter2" not in str(info.value)


# ----------------------------------------------------------------------------- pool and adapters
def test_no_network_io_before_enter() -> None:
    # Port 1 refuses connections: constructing must not try to connect.
    RunIndex(config())
    LeaseManager(config())
    ConnectionPool(config(), size=2)


def test_pool_rejects_a_zero_size_and_a_closed_pool_hands_out_nothing() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ConnectionPool(config(), size=0)
    pool = ConnectionPool(config(), size=1)
    assert pool.size == 1
    pool.close()
    with pytest.raises(PostgresError, match="closed"):
        pool.getconn()


def test_opening_against_a_down_server_fails_with_the_cause() -> None:
    with pytest.raises(PostgresUnavailableError, match="cannot connect to Postgres"):  # noqa: SIM117
        with RunIndex(config(connect_timeout=1, max_attempts=2, backoff_max=0.01)):
            pass


# ----------------------------------------------------------------------------- ports
def _public_methods(proto: type) -> dict[str, Any]:
    return {name: member for name, member in vars(proto).items()
            if (not name.startswith("_") or name in ("__enter__", "__exit__"))
            and (callable(member) or isinstance(member, property))}


@pytest.mark.parametrize(("proto", "impl"), [
    (ports.RunIndex, RunIndex),
    (ports.OperatorAudit, RunIndex),
    (ports.Leases, LeaseManager),
    (ports.Lease, Lease),
])
def test_adapters_match_the_port_signatures(proto: type, impl: type) -> None:
    wanted = _public_methods(proto)
    assert wanted, proto
    for name, member in wanted.items():
        got = getattr(impl, name, None)
        assert got is not None, f"{impl.__name__} lacks {name}"
        if isinstance(member, property):
            assert isinstance(inspect.getattr_static(impl, name), property), name
            continue
        # Annotations are compared as written (both modules use `from __future__ import annotations`).
        want_sig = inspect.signature(member)
        got_sig = inspect.signature(got)
        assert list(got_sig.parameters) == list(want_sig.parameters), name
        for p_name, p in want_sig.parameters.items():
            q = got_sig.parameters[p_name]
            assert (q.kind, q.default, q.annotation) == (p.kind, p.default, p.annotation), \
                f"{impl.__name__}.{name}({p_name})"
