"""Hostile ``sr-signature`` headers (contract §10): with tenant keys configured, every forged,
malformed or misplaced signature on an intent is REJECTED ``UNAUTHENTICATED`` with a DLQ copy
(original bytes and headers), before any S3 request or index access — never READY, never an
untyped error.

The sibling of ``test_hostile_input.py`` (same ``@HOSTILE`` profiles, same ``corpus/``
mechanism; kept apart so each module stays readable). The processor is SR's own, on the
in-memory ports (:class:`tests.harness.app_world.World`), with complete evidence in place: a
signature check that let anything through would show up as READY.

* ``corpus/signature/*.hdr`` (written by ``corpus/make_corpus.py``): header values that do not
  depend on keys or bytes — empty, wrong prefix, bad or URL-safe base64, 64 bytes of garbage
  under the tenant's key id, unknown / other tenant's / operator's / engine's key ids,
  traversal and non-ASCII key ids, 513 bytes...
* made at test time: no header; a 1 MiB header; a flipped bit of the genuine signature; genuine
  signatures by another tenant's, an operator's and an engine's key, by an unlisted key that
  claims the tenant's key id, and by the tenant's own key over other bytes (another intent,
  the Avro body without its single-object header, the value plus one byte); the genuine
  header under another header name.
* Several ``sr-signature`` headers: the first one decides (``Record.header``), so a forged
  first header is not rescued by a genuine second one, and a genuinely signed record stays
  accepted whatever headers are appended after it (they cannot change the signed value).
* A hypothesis generator of header values (raw bytes, near-miss structures, mutations of the
  genuine header, wrong-key signatures, followed by extra headers): 300 examples in
  ``make test``, 10,000 in ``make soak``; the count is printed in the reliability summary.
"""

from __future__ import annotations

import base64
import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import assume, event, given
from hypothesis import strategies as st

from tests.harness.app_world import DLQ, TOPICS, World
from tests.reliability.conftest import HOSTILE, HOSTILE_PROFILE, report
from tests.reliability.test_hostile_input import FRAGMENTS, hostile_text, mostly, mutated
from worker.app.authentication import InputAuthority
from worker.app.outcomes import Action
from worker.app.processor import RunProcessor
from worker.app.publisher import error_headers
from worker.core.engine import EngineResult, EngineStatus
from worker.core.identity import run_id_of
from worker.core.models import RunIntent, TriggerKind
from worker.core.signatures import KEY_ID_PATTERN, SIGNATURE_HEADER, SignatureHeader, parse_signature_header
from worker.errors import UnauthenticatedError
from worker.signing import Signer, key_ring

CORPUS = Path(__file__).resolve().parent / "corpus" / "signature"
B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
Headers = Sequence[tuple[str, bytes]]


def _signer(principal: str, key_id: str, seed: str | None = None) -> Signer:
    """A key derived from a fixed seed: a failing example replays with the same signatures."""
    private = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"sr-hostile|{seed or key_id}".encode()).digest())
    return Signer(principal, key_id, private)


T1 = _signer("t1", "t1-2026")
T2 = _signer("t2", "t2-2026")
ALICE = _signer("alice", "alice-2026")
ENGINE = _signer("engine-1", "engine-1-2026")
#: Claims the tenant's key id with a key nobody listed.
IMPOSTOR = _signer("t1", "t1-2026", seed="impostor")
AUTHORITY = InputAuthority(tenants=key_ring(T1, T2, name="SR_SIGNING_KEYS"),
                           operators=key_ring(ALICE, name="SR_OPERATOR_KEYS"),
                           engines=key_ring(ENGINE, name="SR_ENGINE_KEYS"))


@dataclass
class Bench:
    """One world with tenant keys configured, the intent of tenant t1 (its evidence complete)
    and its exact value bytes."""

    world: World
    processor: RunProcessor
    intent: RunIntent
    value: bytes

    @classmethod
    def create(cls) -> Bench:
        world = World()
        intent = world.intent("signed")
        world.write_complete(intent)  # whatever slips through the check would become READY
        return cls(world, world.processor(authority=AUTHORITY), intent, world.codec.encode_intent(intent))

    @property
    def genuine(self) -> bytes:
        return T1.signature_header(self.value)

    def refused(self, headers: Headers) -> str:
        """Hand the intent over with ``headers``; check REJECTED UNAUTHENTICATED, one status event
        and one DLQ copy (original bytes and headers) and no S3 or Postgres request. Returns the
        refusal's message."""
        w = self.world
        s3, pg, sent = sum(w.store.requests.values()), w.db.round_trips, len(w.sink.sent)
        outcome = w.handle(self.processor, self.intent, headers=headers)
        assert (outcome.action, outcome.detail) == (Action.REJECTED, "UNAUTHENTICATED"), outcome
        assert sum(w.store.requests.values()) == s3 and w.db.round_trips == pg
        status, dead = w.sink.sent[sent:]  # indexing, not scanning: the soak sends 20,000 messages
        event_ = w.codec.decode_status(status.value)
        assert (status.topic, event_.status.value, event_.reason_code) == (TOPICS.status, "REJECTED", "UNAUTHENTICATED")
        assert (dead.topic, dead.value, dead.key) == (DLQ, self.value, None)
        assert error_headers(dead.headers)["sr-error-class"] == "UNAUTHENTICATED"
        assert all(h in dead.headers for h in headers)  # the forensic copy keeps what was sent
        assert outcome.dead_letter is not None
        return str(outcome.dead_letter)

    def assert_untouched(self) -> None:
        """No run row, no ledger, no READY: the refused intent left no trace but the DLQ/status."""
        assert self.world.index.get(run_id_of(self.intent)) is None
        assert self.world.ready_events() == []


def _header(value: bytes) -> list[tuple[str, bytes]]:
    return [(SIGNATURE_HEADER, value)]


# ----------------------------------------------------------------------------- the control
def test_the_genuine_signature_is_admitted_so_the_refusals_are_the_headers_doing() -> None:
    bench = Bench.create()
    outcome = bench.world.handle(bench.processor, bench.intent, headers=_header(bench.genuine))
    assert outcome.action is Action.READY and bench.world.dlq() == []


# ----------------------------------------------------------------------------- the corpus
def _corpus() -> list[Path]:
    return sorted(CORPUS.iterdir())


@pytest.mark.parametrize("path", _corpus(), ids=lambda p: p.name)
def test_corpus_signature_headers_are_rejected_unauthenticated(path: Path) -> None:
    bench = Bench.create()
    bench.refused(_header(path.read_bytes()))
    bench.assert_untouched()


def _made_at_test_time(bench: Bench) -> dict[str, Headers]:
    value, genuine = bench.value, parse_signature_header(bench.genuine)
    other = bench.world.codec.encode_intent(bench.world.intent("other"))

    def flipped(bit: int) -> bytes:
        signature = bytearray(genuine.signature)
        signature[bit // 8] ^= 1 << (bit % 8)
        return SignatureHeader(genuine.key_id, bytes(signature)).encode()

    cases: dict[str, Headers] = {
        "no-header": [],
        "huge-1MiB": _header(b"key=t1-2026;ed25519=" + b"A" * (1 << 20)),
        "huge-1MiB-nul": _header(b"\x00" * (1 << 20)),
        "other-tenants-valid-signature": _header(T2.signature_header(value)),
        "operators-valid-signature": _header(ALICE.signature_header(value)),
        "engines-valid-signature": _header(ENGINE.signature_header(value)),
        "impostor-key-claiming-t1s-id": _header(IMPOSTOR.signature_header(value)),
        "t1-signature-of-another-intent": _header(T1.signature_header(other)),
        "t1-signature-of-the-avro-body-only": _header(T1.signature_header(value[10:])),
        "t1-signature-of-value-plus-a-byte": _header(T1.signature_header(value + b"\x00")),
        "t1-signature-of-nothing": _header(T1.signature_header(b"")),
        "uppercase-header-name": [("SR-Signature", bench.genuine)],
        "header-name-with-space": [("sr-signature ", bench.genuine)],
        "underscore-header-name": [("sr_signature", bench.genuine)],
        "forged-first-genuine-second": [*_header(flipped(0)), *_header(bench.genuine)],
        "empty-first-genuine-second": [*_header(b""), *_header(bench.genuine)],
    }
    cases |= {f"flipped-bit-{bit}": _header(flipped(bit)) for bit in (0, 7, 8, 255, 256, 504, 511)}
    return cases


_TEST_TIME_CASES = sorted(_made_at_test_time(Bench.create()))


@pytest.mark.parametrize("name", _TEST_TIME_CASES)
def test_key_and_value_dependent_forgeries_are_rejected_unauthenticated(name: str) -> None:
    bench = Bench.create()
    message = bench.refused(_made_at_test_time(bench)[name])
    bench.assert_untouched()
    assert len(message) < 300 and "AAAA" not in message  # a hostile header is never echoed back


def test_with_two_signature_headers_the_first_decides() -> None:
    """Documented behaviour: the first ``sr-signature`` header is the one checked. A genuine
    first header keeps the record accepted whatever follows (appended headers cannot change
    the signed value); a forged first header is not rescued by a genuine second one."""
    bench = Bench.create()
    bench.refused([*_header(b"key=t1-2026;ed25519=" + b"A" * 86 + b"=="), *_header(bench.genuine)])
    outcome = bench.world.handle(bench.processor, bench.intent,
                                 headers=[*_header(bench.genuine), *_header(b"garbage"), *_header(b"")])
    assert outcome.action is Action.READY


def test_a_non_canonical_spelling_of_the_genuine_signature_is_refused() -> None:
    """Each signature has one accepted spelling: the unused low bits of the last base64
    character must be zero (found while building this corpus, then fixed)."""
    import base64

    bench = Bench.create()
    text = bench.genuine.decode()
    respelled = text[:-3] + B64_ALPHABET[B64_ALPHABET.index(text[-3]) ^ 1] + "=="
    sig = text.split("ed25519=", 1)[1]
    assert respelled != text and base64.b64decode(respelled.split("ed25519=", 1)[1]) == base64.b64decode(sig)
    with pytest.raises(UnauthenticatedError, match="canonical"):
        parse_signature_header(respelled.encode())
    bench.refused(_header(respelled.encode()))


@pytest.mark.parametrize("path", _corpus(), ids=lambda p: p.name)
def test_corpus_headers_on_triggers_and_engine_results_are_typed_refusals(path: Path) -> None:
    """The same check guards triggers (operator keys) and engine results (engine keys): each
    refusal is an UnauthenticatedError (the worker loop dead-letters it) before any lease,
    ledger or S3 access."""
    bench = Bench.create()
    w, headers = bench.world, _header(path.read_bytes())
    s3, pg = sum(w.store.requests.values()), w.db.round_trips
    run_id = run_id_of(bench.intent)
    with pytest.raises(UnauthenticatedError):
        w.handle_trigger(bench.processor, w.trigger(run_id, TriggerKind.REEMIT, by="alice"), headers=headers)
    result = EngineResult(attempt_id="0" * 32, run_id=run_id, status=EngineStatus.SUCCEEDED, detail="",
                          reported_by="engine-1", finished_at=w.clock())
    with pytest.raises(UnauthenticatedError):
        w.handle_result(bench.processor, result, headers=headers)
    assert sum(w.store.requests.values()) == s3 and w.db.round_trips == pg


# ----------------------------------------------------------------------------- generated headers
_KEY_IDS = ["t1-2026", "t2-2026", "alice-2026", "engine-1-2026", "nobody-2026", "T1-2026", "t1-2026 ", ""]
_key_ids = st.one_of(st.sampled_from(_KEY_IDS), st.from_regex(rf"\A{KEY_ID_PATTERN}\Z"), hostile_text)
_signature_texts = st.one_of(
    st.binary(min_size=60, max_size=68).map(lambda b: base64.b64encode(b).decode()),
    st.text(st.sampled_from(B64_ALPHABET + "=-_ \n\x00"), min_size=80, max_size=92),
    st.lists(st.sampled_from(FRAGMENTS), max_size=6).map("".join),
)
_structured = st.builds(
    lambda prefix, key_id, sep, algorithm, signature: f"{prefix}{key_id}{sep}{algorithm}={signature}".encode(
        "utf-8", "surrogatepass"),
    mostly(st.just("key="), st.sampled_from(["", "KEY=", "key:", " key=", "kid="])),
    _key_ids,
    mostly(st.just(";"), st.sampled_from([",", "; ", "&", "", ";;"])),
    mostly(st.just("ed25519"), st.sampled_from(["ED25519", "ed448", "rsa", ""])),
    _signature_texts,
)
_mutations = st.lists(st.tuples(st.sampled_from(["flip", "insert", "delete", "truncate", "extend", "set"]),
                                st.integers(0, 120), st.integers(0, 255)), min_size=1, max_size=6)
_FOREIGN = ["other-tenant", "operator", "engine", "impostor", "another-intent", "body-only", "value-plus-byte"]
_first_headers = st.one_of(
    st.tuples(st.just("bytes"), st.binary(max_size=600)),
    st.tuples(st.just("structured"), _structured),
    st.tuples(st.just("mutated"), _mutations),
    st.tuples(st.just("foreign"), st.sampled_from(_FOREIGN)),
)


def _foreign(bench: Bench, name: str) -> bytes:
    value = bench.value
    signed = {"other-tenant": (T2, value), "operator": (ALICE, value), "engine": (ENGINE, value),
              "impostor": (IMPOSTOR, value), "another-intent": (T1, value[:-1] + bytes([value[-1] ^ 1])),
              "body-only": (T1, value[10:]), "value-plus-byte": (T1, value + b"\n")}
    signer, data = signed[name]
    return signer.signature_header(data)


def _is_genuine(raw: bytes, genuine: SignatureHeader) -> bool:
    """Whether ``raw`` parses to the genuine key id and signature (an identity mutation such as
    a truncation past the end).
    Such a header is a valid signature, not a hostile one: it is drawn again, not counted."""
    try:
        return parse_signature_header(raw) == genuine
    except UnauthenticatedError:
        return False


def test_generated_signature_headers_are_all_rejected_unauthenticated() -> None:
    """Every generated first header (plus up to two extra ``sr-signature`` headers, genuine or
    not) is REJECTED UNAUTHENTICATED with a DLQ copy and no S3/Postgres request; 0 untyped errors."""
    bench = Bench.create()
    genuine = parse_signature_header(bench.genuine)
    tally: Counter[str] = Counter()

    @HOSTILE
    @given(first=_first_headers, extra=st.lists(st.sampled_from(["genuine", "garbage", "empty"]), max_size=2))
    def check(first: tuple[str, Any], extra: list[str]) -> None:
        kind, spec = first
        raw = mutated(bench.genuine, spec) if kind == "mutated" else _foreign(bench, spec) if kind == "foreign" \
            else bytes(spec)
        tally["generated"] += 1
        if _is_genuine(raw, genuine):
            tally["genuine spelling"] += 1
            assume(False)  # not hostile: hypothesis draws another, so the count of hostile headers holds
        trailing = {"genuine": bench.genuine, "garbage": b"key=t1-2026;ed25519=", "empty": b""}
        headers = [*_header(raw), *((SIGNATURE_HEADER, trailing[e]) for e in extra)]
        try:
            message = bench.refused(headers)
        except AssertionError:
            tally["wrong outcome"] += 1
            raise
        except Exception as exc:  # untyped: SR would dead-letter it as INTERNAL
            tally["untyped"] += 1
            raise AssertionError(f"untyped error {type(exc).__module__}.{type(exc).__name__}: {exc!r}") from exc
        tally["rejected UNAUTHENTICATED"] += 1
        event(f"{kind}: {message.split(':')[0][:60]}")

    cast("Callable[[], None]", check)()  # hypothesis' decorators are untyped
    bench.assert_untouched()
    line = (f"hostile sr-signature headers ({HOSTILE_PROFILE}): {tally['rejected UNAUTHENTICATED']} tried, all "
            f"REJECTED UNAUTHENTICATED with a DLQ copy, {tally['untyped']} untyped errors "
            f"({tally['generated']} generated; {tally['genuine spelling']} were spellings of the genuine "
            "signature, not hostile, and were drawn again)")
    report(line)
    print(line)  # also visible with -s outside the summary
    assert tally["untyped"] == tally["wrong outcome"] == 0
    assert tally["rejected UNAUTHENTICATED"] == tally["generated"] - tally["genuine spelling"]
    # The HOSTILE profile's example count (300, or 10,000 under SR_SOAK): every one a hostile header.
    assert tally["rejected UNAUTHENTICATED"] >= HOSTILE.max_examples
