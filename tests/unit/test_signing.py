"""Signed input, the producer side (contract §10): the ``sr-signature`` grammar, private key
files, ``sr keys``, and the signatures ``sr submit``, ``sr trigger``, the client and the
reference engine put on what they produce — each checked with the worker's own rules
(:class:`~worker.app.authentication.InputAuthority`) over the exact bytes produced.
No server: the producer is the in-memory :class:`~worker.app.testing.StubEventSink`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.harness.paths import EXAMPLE_POLICY
from worker.app.authentication import InputAuthority
from worker.app.ports import Record
from worker.app.testing import InMemoryObjectStore, SentMessage, StubEventSink
from worker.cli.main import main
from worker.core.policy import Policy
from worker.core.signatures import (
    KEY_ID_PATTERN,
    SIGNATURE_BYTES,
    SIGNATURE_HEADER,
    KeyRing,
    SignatureHeader,
    parse_signature_header,
)
from worker.engine import loop as loop_module
from worker.engine.loop import SimulatorLoop
from worker.engine.simulator import DEFAULT_REPORTED_BY, SimulatorConfig
from worker.errors import ConfigError, UnauthenticatedError
from worker.settings import Settings
from worker.signing import KEY_FILE_FORMAT, SIGNING_KEY_ENV, Signer, generate_key_file, key_ring, key_set

from .conftest import intent_dict, make_intent
from .test_engine_simulator import ScriptedConsumer  # the engine loop's consumer double

RUN_ID = "0123456789abcdef0123456789abcdef"
VALUE = b"\xc3\x01exact value bytes \x00\xff"


@pytest.fixture(autouse=True)
def _no_ambient_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own ``SR_SIGNING_KEY`` must not sign (or break) these tests."""
    monkeypatch.delenv(SIGNING_KEY_ENV, raising=False)
    monkeypatch.delenv("SR_OPERATOR", raising=False)


@pytest.fixture
def sink(monkeypatch: pytest.MonkeyPatch) -> StubEventSink:
    """The producer every command and the client get from the composition root."""
    stub = StubEventSink()
    monkeypatch.setattr("worker.runtime.compose.event_producer", lambda settings: contextlib.nullcontext(stub))
    return stub


def _signature_of(message: SentMessage) -> bytes | None:
    return message.as_record().header(SIGNATURE_HEADER)


# ----------------------------------------------------------------------------- the header grammar
@given(key_id=st.from_regex(rf"\A{KEY_ID_PATTERN}\Z"), signature=st.binary(min_size=64, max_size=64))
def test_a_header_round_trips_through_its_one_encoding(key_id: str, signature: bytes) -> None:
    header = SignatureHeader(key_id, signature)
    raw = header.encode()
    assert parse_signature_header(raw) == header
    assert raw == f"key={key_id};ed25519={base64.b64encode(signature).decode()}".encode()


def test_a_signers_header_parses_and_verifies_over_exactly_the_signed_bytes() -> None:
    signer = Signer.generate("t1", "t1-2026")
    raw = signer.signature_header(VALUE)
    header = parse_signature_header(raw)
    assert header.key_id == "t1-2026" and len(header.signature) == SIGNATURE_BYTES
    assert signer.headers_for(VALUE) == {SIGNATURE_HEADER: raw}
    assert signer.signature_header(VALUE) == raw  # Ed25519 is deterministic: a re-send is identical
    ring = key_ring(signer)
    ring.check(header, VALUE)
    for other in (VALUE + b"\x00", VALUE[:-1], b""):
        with pytest.raises(UnauthenticatedError, match="does not match"):
            ring.check(header, other)


@pytest.mark.parametrize("raw", [None, b"", b"key=t1-2026", b"key=t1-2026;ed25519=", b" key=t1-2026;ed25519=x",
                                 b"key=t1-2026;ed25519=" + b"A" * 86 + b"==\n", "key=é;ed25519=".encode()])
def test_malformed_headers_are_refused_as_unauthenticated(raw: bytes | None) -> None:
    with pytest.raises(UnauthenticatedError):
        parse_signature_header(raw)


# ----------------------------------------------------------------------------- key files
def test_a_key_file_round_trips_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "t1.key"
    written = generate_key_file(path, principal="t1", key_id="t1-2026")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = json.loads(path.read_text())
    assert document["format"] == KEY_FILE_FORMAT and document["version"] == 1
    assert (document["principal"], document["key_id"]) == ("t1", "t1-2026")
    loaded = Signer.from_file(path)
    assert (loaded.principal, loaded.key_id, loaded.public_key) == ("t1", "t1-2026", written.public_key)
    key_ring(written).check(parse_signature_header(loaded.signature_header(VALUE)), VALUE)


def test_a_key_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "t1.key"
    generate_key_file(path, principal="t1")
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="never overwritten"):
        generate_key_file(path, principal="t1")
    link = tmp_path / "link.key"
    link.symlink_to(tmp_path / "elsewhere.key")  # O_EXCL: not even through a dangling symlink
    with pytest.raises(ConfigError, match="never overwritten"):
        generate_key_file(link, principal="t1")
    assert path.read_bytes() == before and not (tmp_path / "elsewhere.key").exists()


def test_the_default_key_id_names_the_principal_and_differs_per_key() -> None:
    first, second = Signer.generate("t1"), Signer.generate("t1")
    assert first.key_id.startswith("t1-") and len(first.key_id) == len("t1-") + 8
    assert first.key_id != second.key_id


_DOCUMENT = Signer.generate("t1", "t1-2026").key_file_document()
_OTHER = Signer.generate("t1").key_file_document()


def _dumped(**changes: Any) -> bytes:
    return json.dumps({**_DOCUMENT, **changes}).encode()


@pytest.mark.parametrize(("data", "message"), [
    pytest.param(_dumped(public_key=_OTHER["public_key"]), "does not belong", id="foreign-public-key"),
    pytest.param(_dumped(private_key=_OTHER["private_key"]), "does not belong", id="foreign-private-key"),
    pytest.param(_dumped(format="pem"), "not an sr-ed25519-private-key version 1 file", id="other-format"),
    pytest.param(_dumped(version=2), "version 1", id="version-2"),
    pytest.param(json.dumps({k: v for k, v in _DOCUMENT.items() if k != "principal"}).encode(), "version 1",
                 id="principal-missing"),
    pytest.param(_dumped(principal=7), "version 1", id="principal-not-a-string"),
    pytest.param(_dumped(principal="../t1"), "not a valid identifier", id="principal-traversal"),
    pytest.param(_dumped(key_id="a key"), "is not valid", id="key-id-with-space"),
    pytest.param(_dumped(private_key="!!"), "not a base64 32-byte Ed25519 key", id="private-not-base64"),
    pytest.param(_dumped(private_key=base64.b64encode(b"x" * 31).decode()), "32-byte", id="private-31-bytes"),
    pytest.param(b"[]", "version 1", id="array"),
    pytest.param(b"-----BEGIN PRIVATE KEY-----", "not JSON", id="pem"),
    pytest.param(b'{"format": "\xff"}', "not JSON", id="not-utf8"),
    pytest.param(_dumped(padding="x" * 64 * 1024), "larger than 65536 bytes", id="oversize"),
])
def test_a_tampered_key_file_is_refused(data: bytes, message: str, tmp_path: Path) -> None:
    path = tmp_path / "tampered.key"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=message):
        Signer.from_file(path)


def test_a_missing_key_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read signing key"):
        Signer.from_file(tmp_path / "nope.key")


def test_the_key_set_groups_keys_by_principal_and_parses_as_a_key_ring() -> None:
    a1, a2, op = Signer.generate("t1"), Signer.generate("t1"), Signer.generate("alice")
    document = key_set(a1, a2, op)
    assert document == {"t1": [a1.key_set_entry(), a2.key_set_entry()], "alice": [op.key_set_entry()]}
    ring = KeyRing.from_json(json.dumps(document))
    assert (ring.principal_of(a2.key_id), ring.principal_of(op.key_id), len(ring)) == ("t1", "alice", 3)


# ----------------------------------------------------------------------------- sr keys
def _sr(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_sr_keys_generate_writes_a_private_key_and_prints_a_working_key_set(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tenant-a.key"
    code, out, err = _sr(["keys", "generate", "--principal", "tenant-a", "--key-id", "a-2026", "--out", str(path)],
                         capsys)
    assert code == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    ring = KeyRing.from_json(out, name="SR_SIGNING_KEYS")  # stdout is exactly the snippet
    assert ring.principal_of("a-2026") == "tenant-a" and len(ring) == 1
    signer = Signer.from_file(path)
    ring.check(parse_signature_header(signer.signature_header(VALUE)), VALUE)
    assert err.count("\n") == 1 and "SR_SIGNING_KEYS" in err and "SR_OPERATOR_KEYS" in err \
        and "SR_ENGINE_KEYS" in err and str(path) in err
    private = json.loads(path.read_text())["private_key"]
    assert private not in out and private not in err

    # `sr keys public` prints the same snippet again; `--json` adds what a script wants.
    assert _sr(["keys", "public", "--key", str(path)], capsys)[1] == out
    code, out_json, _ = _sr(["keys", "public", "--key", str(path), "--json"], capsys)
    row = json.loads(out_json)
    assert code == 0 and out_json.count("\n") == 1
    assert (row["principal"], row["key_id"], row["key_file"]) == ("tenant-a", "a-2026", str(path))
    assert row["key_set"] == json.loads(out) and row["public_key"] == json.loads(out)["tenant-a"][0]["public_key"]


def test_sr_keys_generate_refuses_to_overwrite_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "op.key"
    assert _sr(["keys", "generate", "--principal", "alice", "--out", str(path), "--json"], capsys)[0] == 0
    before = path.read_bytes()
    code, out, err = _sr(["keys", "generate", "--principal", "alice", "--out", str(path)], capsys)
    assert (code, out) == (2, "")
    assert err.startswith("sr: error: ") and "never overwritten" in err and err.count("\n") == 1
    assert path.read_bytes() == before


def test_sr_keys_public_reads_the_key_from_the_environment(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "e.key"
    signer = generate_key_file(path, principal="engine-1")
    monkeypatch.setenv(SIGNING_KEY_ENV, str(path))
    code, out, _ = _sr(["keys", "public"], capsys)
    assert code == 0 and json.loads(out) == key_set(signer)


@pytest.mark.parametrize(("argv", "message"), [
    (["keys", "generate", "--principal", "a", "--out", "-"], "the private key is never printed"),
    (["keys", "generate", "--principal", "bad name", "--out", "{tmp}/k"], "is not a valid identifier"),
    (["keys", "generate", "--principal", "a", "--key-id", "no/slash", "--out", "{tmp}/k"], "is not valid"),
    (["keys", "generate", "--principal", "a", "--out", "{tmp}/missing/k"], "cannot write"),
    (["keys", "public"], "give --key FILE or set SR_SIGNING_KEY"),
])
def test_sr_keys_refusals_are_one_line_and_write_nothing(argv: list[str], message: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _sr([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert (code, out) == (2, "")
    assert err.startswith("sr: error: ") and message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- sr submit
def _key(tmp_path: Path, principal: str, key_id: str | None = None) -> tuple[Path, Signer]:
    path = tmp_path / f"{principal}-{key_id or 'key'}.json"
    return path, generate_key_file(path, principal=principal, key_id=key_id)


def _intent_file(tmp_path: Path, *tenants: str) -> Path:
    path = tmp_path / "intents.jsonl"
    path.write_text("\n".join(json.dumps(intent_dict(tenant_id=t, request_id=f"r-{n}",
                                                     evidence_root=f"s3://sr-dev/evidence/{t}/run1"))
                              for n, t in enumerate(tenants)) + "\n")
    return path


def _tenant_authority(*signers: Signer) -> InputAuthority:
    return InputAuthority(tenants=key_ring(*signers, name="SR_SIGNING_KEYS"))


def test_sr_submit_signs_each_intent_over_the_bytes_it_produced(tmp_path: Path, sink: StubEventSink,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from worker.adapters.avro import AvroCodec

    key, signer = _key(tmp_path, "t1", "t1-2026")
    code, out, err = _sr(["submit", str(_intent_file(tmp_path, "t1", "t1")), "--key", str(key)], capsys)
    assert code == 0 and err == "" and len(out.splitlines()) == 2
    sent = sink.messages("sr.run-intents")
    assert len(sent) == 2 and len({m.value for m in sent}) == 2
    authority = _tenant_authority(signer)
    for message in sent:
        intent = AvroCodec().decode_intent(message.value)
        assert authority.check_intent(intent, _signature_of(message), message.value) == "t1-2026"
        with pytest.raises(UnauthenticatedError):  # bound to these bytes: another message's header fails
            authority.check_intent(intent, _signature_of(message), sent[0].value + sent[1].value)


def test_sr_submit_signs_with_the_environments_key_and_is_unsigned_without_one(
        tmp_path: Path, sink: StubEventSink, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    intents = str(_intent_file(tmp_path, "t1"))
    assert _sr(["submit", intents], capsys)[0] == 0
    key, signer = _key(tmp_path, "t1")
    monkeypatch.setenv(SIGNING_KEY_ENV, str(key))
    assert _sr(["submit", intents], capsys)[0] == 0
    unsigned, signed = sink.messages("sr.run-intents")
    assert unsigned.headers == () and unsigned.value == signed.value
    key_ring(signer).check(parse_signature_header(_signature_of(signed)), signed.value)


def test_sr_submit_warns_once_per_tenant_the_key_cannot_sign_for(tmp_path: Path, sink: StubEventSink,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    key, _ = _key(tmp_path, "t1")
    code, out, err = _sr(["submit", str(_intent_file(tmp_path, "t1", "t2", "t2", "t3")), "--key", str(key)], capsys)
    assert code == 0 and len(out.splitlines()) == 4 and len(sink.messages("sr.run-intents")) == 4
    warnings = err.splitlines()
    assert len(warnings) == 2 and all(w.startswith("sr: warning: ") and "'t1'" in w for w in warnings)
    assert "'t2'" in warnings[0] and "'t3'" in warnings[1]


def test_sr_submit_with_an_unusable_key_sends_nothing(tmp_path: Path, sink: StubEventSink,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("{}")
    code, _, err = _sr(["submit", str(_intent_file(tmp_path, "t1")), "--key", str(bad)], capsys)
    assert code == 3 and "is not an sr-ed25519-private-key" in err and err.count("\n") == 1
    assert sink.sent == []


# ----------------------------------------------------------------------------- sr trigger
def _operators(*signers: Signer) -> InputAuthority:
    return InputAuthority(operators=key_ring(*signers, name="SR_OPERATOR_KEYS"))


def _trigger(sink: StubEventSink) -> tuple[Any, SentMessage]:
    from worker.adapters.avro import AvroCodec

    [message] = sink.messages("sr.triggers")
    return AvroCodec().decode_trigger(message.value), message


def test_sr_trigger_retry_is_signed_by_the_operator_it_names(tmp_path: Path, sink: StubEventSink,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    key, alice = _key(tmp_path, "alice", "alice-1")
    code, out, err = _sr(["trigger", RUN_ID, "--kind", "RETRY", "--reason", "fixed", "--key", str(key)], capsys)
    assert code == 0 and err == "" and json.loads(out)["kind"] == "RETRY"
    trigger, message = _trigger(sink)
    assert trigger.kind.value == "RETRY" and trigger.requested_by == "alice"  # defaulted to the key's principal
    assert message.key == RUN_ID.encode()
    authority = _operators(alice)
    assert authority.check_trigger(trigger, _signature_of(message), message.value, run_tenant=lambda: None) == "alice-1"
    assert authority.may_retry(trigger)


@pytest.mark.parametrize(("kind", "tenant_note"), [("REEMIT", False), ("EVIDENCE_ARRIVED", True)])
def test_sr_trigger_warns_when_requested_by_is_not_the_keys_principal(
        kind: str, tenant_note: bool, tmp_path: Path, sink: StubEventSink,
        capsys: pytest.CaptureFixture[str]) -> None:
    key, alice = _key(tmp_path, "alice")
    code, _, err = _sr(["trigger", RUN_ID, "--kind", kind, "--requested-by", "bob", "--key", str(key)], capsys)
    assert code == 0 and err.count("\n") == 1 and err.startswith("sr: warning: ")
    assert "'bob'" in err and "'alice'" in err and ("run's tenant" in err) is tenant_note
    trigger, message = _trigger(sink)  # still sent, as asked: the worker decides
    assert trigger.requested_by == "bob"
    with pytest.raises(UnauthenticatedError, match="may not sign it"):
        _operators(alice).check_trigger(trigger, _signature_of(message), message.value, run_tenant=lambda: None)


def test_sr_trigger_without_a_key_is_unsigned_and_attributed_as_before(
        sink: StubEventSink, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SR_OPERATOR", "carol")
    assert _sr(["trigger", RUN_ID, "--kind", "REEVALUATE"], capsys)[0] == 0
    trigger, message = _trigger(sink)
    assert trigger.requested_by == "carol" and message.headers == ()


def test_sr_trigger_accepts_every_trigger_kind() -> None:
    from worker.cli.main import build_parser
    from worker.core.models import TriggerKind

    for kind in TriggerKind:
        assert build_parser().parse_args(["trigger", RUN_ID, "--kind", kind.value]).kind == kind.value


# ----------------------------------------------------------------------------- the client
def test_the_client_signs_each_intent_when_given_a_signer(sink: StubEventSink) -> None:
    from worker.adapters.avro import AvroCodec
    from worker.client import Signer as ClientSigner
    from worker.client import submit, submit_many

    signer = Signer.generate("t1", "t1-2026")
    assert ClientSigner is Signer
    intents = [make_intent(scenario_id="a"), make_intent(scenario_id="b")]
    settings = Settings()
    run_ids = submit_many(intents, settings, signer=signer)
    submit(make_intent(scenario_id="c"), settings)  # unsigned: the call as before signing existed
    first, second, unsigned = sink.messages(settings.topics.intents)
    assert [first.key, second.key] == [r.encode() for r in run_ids]
    assert unsigned.headers == ()
    authority = _tenant_authority(signer)
    for message in (first, second):
        intent = AvroCodec().decode_intent(message.value)
        assert authority.check_intent(intent, _signature_of(message), message.value) == "t1-2026"


# ----------------------------------------------------------------------------- the reference engine
def _answer_one(monkeypatch: pytest.MonkeyPatch, policy: Policy, signer: Signer | None,
                reported_by: str) -> SentMessage:
    from tests.harness.engine import engine_request_for
    from worker.adapters.avro import AvroCodec

    frame = AvroCodec().encode_engine_request(engine_request_for(make_intent(), policy, attempt_no=1))
    sink = StubEventSink()
    monkeypatch.setattr(loop_module, "group_consumer",
                        lambda *a, **k: ScriptedConsumer([], [Record("requests", 0, 0, None, frame, (), None)]))
    monkeypatch.setattr(loop_module, "event_producer", lambda s: contextlib.nullcontext(sink))
    monkeypatch.setattr(loop_module, "object_store", lambda s: contextlib.nullcontext(InMemoryObjectStore()))
    settings = Settings(poll_timeout=0.01, commit_interval=0.01,
                        topics={"engine_requests": "requests", "engine_results": "results"})
    loop = SimulatorLoop(settings, policy, SimulatorConfig(delay=0, reported_by=reported_by), max_requests=1,
                         signer=signer)
    thread = threading.Thread(target=loop.run, name="sr-test-engine")
    thread.start()
    thread.join(10)
    if thread.is_alive():
        loop.stop()
        thread.join(5)
        raise AssertionError("the engine loop did not answer its one request")
    [message] = sink.messages("results")
    return message


def test_the_reference_engine_signs_its_results_as_the_engine_it_reports(monkeypatch: pytest.MonkeyPatch,
                                                                          policy: Policy) -> None:
    from worker.adapters.avro import AvroCodec

    signer = Signer.generate("engine-7", "engine-7-a")
    message = _answer_one(monkeypatch, policy, signer, "engine-7")
    result = AvroCodec().decode_engine_result(message.value)
    assert result.reported_by == "engine-7"
    authority = InputAuthority(engines=key_ring(signer, name="SR_ENGINE_KEYS"))
    assert authority.check_result(result, _signature_of(message), message.value) == "engine-7-a"
    assert _answer_one(monkeypatch, policy, None, DEFAULT_REPORTED_BY).headers == ()


def test_the_reference_engine_refuses_a_key_of_another_engine(policy: Policy) -> None:
    with pytest.raises(ConfigError, match="not the signing key's principal"):
        SimulatorLoop(Settings(), policy, SimulatorConfig(reported_by="engine-7"), signer=Signer.generate("engine-8"))


def _quiet_engine_command(monkeypatch: pytest.MonkeyPatch, loop_class: type[SimulatorLoop]) -> None:
    """``sr engine simulate`` without its process-wide side effects: no signal handlers, no
    logging set-up (pytest keeps its own), and ``loop_class`` instead of the real loop."""
    monkeypatch.setattr(loop_module, "SimulatorLoop", loop_class)
    monkeypatch.setattr("signal.signal", _no_signal_handlers)
    monkeypatch.setattr("worker.logs.configure_logging", lambda *a, **k: None)
    monkeypatch.setenv("SR_POLICY_FILE", str(EXAMPLE_POLICY))


@pytest.mark.parametrize(("extra", "expected"), [
    ([], "engine-7"),                                # the key's principal by default
    (["--reported-by", "engine-7"], "engine-7"),
    (["--reported-by", "engine-8"], None),           # refused at start-up, one line
])
def test_sr_engine_simulate_reports_as_the_keys_principal(
        extra: list[str], expected: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    key, _ = _key(tmp_path, "engine-7")
    seen: list[str] = []

    class FakeLoop(SimulatorLoop):
        def run(self) -> int:
            seen.append(self._config.reported_by)
            return 0

    _quiet_engine_command(monkeypatch, FakeLoop)
    code, _, err = _sr(["engine", "simulate", "--key", str(key), *extra], capsys)
    if expected is None:
        assert code == 3 and seen == [] and "not the signing key's principal" in err
        assert err.splitlines()[-1].startswith("sr: error: ")
    else:
        assert code == 0 and seen == [expected]


def test_sr_engine_simulate_without_a_key_keeps_its_default_reporter(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, Signer | None]] = []

    class FakeLoop(SimulatorLoop):
        def run(self) -> int:
            seen.append((self._config.reported_by, self._signer))
            return 0

    _quiet_engine_command(monkeypatch, FakeLoop)
    assert _sr(["engine", "simulate"], capsys)[0] == 0
    assert seen == [(DEFAULT_REPORTED_BY, None)]


def _no_signal_handlers(signum: int, handler: Callable[..., Any] | int | None) -> None:
    return None


def test_the_cli_handlers_are_registered() -> None:
    from worker.cli.keys import cmd_generate, cmd_public
    from worker.cli.main import build_parser

    parser = build_parser()
    generate = parser.parse_args(["keys", "generate", "--principal", "p", "--out", "k"])
    public = parser.parse_args(["keys", "public", "--key", "k"])
    assert (generate.handler, public.handler) == (cmd_generate, cmd_public)
    assert isinstance(generate, argparse.Namespace) and os.fspath(generate.out) == "k"
