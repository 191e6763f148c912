"""Runpack verification, content stage: the ledger, the intent, the plan, the facts views and ``run.json``.

* **Ledger**: every entry ``0..n-1`` listed, valid, canonical and hash-chained
  (:mod:`worker.core.ledger`); every body fits its kind (:func:`~worker.core.ledger_bodies.parse_body`,
  ``LEDGER_BODY_INVALID`` otherwise); the derived state and the manifest's head hash and
  as-of time agree with it.
* **Intent**: canonical, it derives the run id, names the manifest's tenant / namespace /
  scenario, and equals the intent recorded in ledger entry seq 0.
* **Plan**: its hash is the one ``plan_hash`` the ledger records, same run, same intent
  fingerprint.
* **Facts views**: every one the ledger references is in the runpack and no other; each
  hashes to its name, is for this run and plan, and has its receipts.
* **Lineage** (contract §6, §11): a READY right after SUPERSEDED(old→new) supersedes ``old``;
  any other READY supersedes the run's last revoked view (a RETRY after a revocation) or
  nothing, so a ``supersedes_facts_view_hash`` names a view that was superseded or revoked,
  never any other; each facts view carries the ``supersedes`` its ledger entry records; a
  REVOKED entry repeats the facts view URI, plan and policy revision of the READY it withdraws.
* **run.json**: equals the summary rebuilt from the ledger.

Each function adds what it finds to :attr:`RunContent.report` and records what it
established in the :class:`~worker.runpack.content.RunContent` for the checks after it.
"""

from __future__ import annotations

from typing import Final

from worker.core.canonical import canonical_json, parse_json_strict, sha256_hex
from worker.core.evidence import GateOutcome, GateResult
from worker.core.facts import FactsView, build_facts_view, facts_view_bytes, parse_facts_view
from worker.core.identity import intent_fingerprint, run_id_of
from worker.core.ledger import LedgerKind, derive_state, parse_entry
from worker.core.ledger_bodies import ReadyBody, RevokedBody, SupersededBody, parse_body
from worker.core.models import parse_intent
from worker.core.plan import parse_plan
from worker.errors import EvidenceError, IntegrityError, IntentInvalidError, InvalidJSONError, MessageTooLargeError
from worker.runpack.artifacts import facts_references, intent_bytes, plan_references, receipts_bytes, run_summary
from worker.runpack.content import RunContent, recorded_fact
from worker.runpack.format import (
    MANIFEST_NAME,
    ArtifactKind,
    artifact_cap,
    facts_path,
    ledger_path,
    receipts_path,
)

__all__ = ["check_facts", "check_intent", "check_ledger", "check_lineage", "check_plan", "check_run_summary"]

#: Where the seq / facts view hash sits in a layout path (``ledger/<seq>.json``, ``facts/<hash>.json``...).
_LEDGER_SEQ: Final = slice(len("ledger/"), len("ledger/") + 12)
_FACTS_NAME: Final = slice(len("facts/"), len("facts/") + 64)
_RECEIPTS_NAME: Final = slice(len("receipts/"), len("receipts/") + 64)


# --------------------------------------------------------------------------- ledger
def check_ledger(c: RunContent) -> None:
    """Parse and chain every listed ledger entry, type its body, then derive the run's state."""
    seqs = [int(p[_LEDGER_SEQ]) for p in c.listed_of(ArtifactKind.LEDGER)]
    if not seqs:
        c.add("REQUIRED_ARTIFACT_MISSING", ledger_path(0), "the runpack has no ledger")
        return
    if seqs != list(range(len(seqs))):
        missing = sorted(set(range(seqs[-1] + 1)) - set(seqs))
        c.add("LEDGER_GAP", None, f"ledger entries missing from the manifest: seq {missing[:10]}")
    previous: bytes | None = None
    complete = True
    for seq in range(seqs[-1] + 1):
        path = ledger_path(seq)
        data = c.contents.get(path)
        if data is None:
            complete, previous = False, None
            continue
        try:
            entry = parse_entry(data, run_id=c.run_id, seq=seq)
        except IntegrityError as exc:
            c.add("LEDGER_ENTRY_INVALID", path, str(exc))
            complete, previous = False, None
            continue
        if seq > 0 and previous is not None and entry.prev_hash != sha256_hex(previous):
            c.add("LEDGER_CHAIN_BROKEN", path, f"prev_hash {entry.prev_hash} is not the sha256 of entry seq {seq - 1}")
            complete = False
        previous = data
        c.entries.append(entry)
        try:
            c.bodies[seq] = parse_body(entry)
        except IntegrityError as exc:
            # The entry stays in the chain (its bytes are what they are); only readers of
            # its body fields skip it.
            c.add("LEDGER_BODY_INVALID", path, str(exc))
    c.complete_ledger = complete and len(c.entries) == seqs[-1] + 1
    if not c.complete_ledger:
        return
    try:
        c.state = derive_state(c.entries)
    except IntegrityError as exc:
        c.add("LEDGER_STATE_INVALID", None, str(exc))
    head = c.contents[ledger_path(len(c.entries) - 1)]
    if sha256_hex(head) != c.manifest.ledger_head_sha256:
        c.add("MANIFEST_MISMATCH", MANIFEST_NAME, "ledger_head_sha256 is not the hash of the last entry")
    if c.entries[-1].at_ms != c.manifest.as_of_ms:
        c.add("MANIFEST_MISMATCH", MANIFEST_NAME, "as_of_ms is not the time of the last ledger entry")


# --------------------------------------------------------------------------- intent
def check_intent(c: RunContent) -> None:
    """``intent.json``: canonical, derives the run id, matches the manifest and ledger entry seq 0."""
    data = c.required("intent.json")
    if data is None:
        return
    try:
        doc = parse_json_strict(data, max_bytes=artifact_cap(ArtifactKind.INTENT))
        intent = parse_intent(doc) if isinstance(doc, dict) else None
    except (InvalidJSONError, MessageTooLargeError, IntentInvalidError) as exc:
        c.add("INTENT_INVALID", "intent.json", str(exc))
        return
    if intent is None or not isinstance(doc, dict):
        c.add("INTENT_INVALID", "intent.json", "intent.json is not an object")
        return
    if intent_bytes(doc) != data:
        c.add("INTENT_INVALID", "intent.json", "intent.json is not canonical JSON")
    c.intent = intent
    if run_id_of(intent) != c.run_id:
        c.add("INTENT_RUN_MISMATCH", "intent.json", f"the intent derives run {run_id_of(intent)}, not {c.run_id}")
    m = c.manifest
    if (intent.tenant_id, intent.namespace, intent.scenario_id) != (m.tenant_id, m.namespace, m.scenario_id):
        c.add("MANIFEST_MISMATCH", MANIFEST_NAME, "tenant/namespace/scenario differ from the intent's")
    first = c.bodies.get(0)
    recorded = first.intent if first is not None else None
    if recorded is not None and recorded != doc:
        c.add("INTENT_MISMATCH", "intent.json", "differs from the intent recorded in ledger entry seq 0")


# --------------------------------------------------------------------------- plan
def check_plan(c: RunContent) -> None:
    """``plan.json``: the one plan the ledger records (hash, run, intent fingerprint)."""
    plans = plan_references(c.typed_bodies())
    if len(plans) > 1:
        c.add("PLAN_AMBIGUOUS", None, f"the ledger records {len(plans)} different plan hashes")
    expected = plans[0] if plans else None
    c.plan_hash = expected
    if c.complete_ledger and expected != c.manifest.plan_hash:
        c.add("MANIFEST_MISMATCH", MANIFEST_NAME, f"plan_hash {c.manifest.plan_hash} is not the ledger's {expected}")
    if expected is None:
        if "plan.json" in c.listed:
            c.add("PLAN_UNREFERENCED", "plan.json", "no ledger entry records a plan_hash")
        return
    data = c.required("plan.json")
    if data is None:
        return
    if sha256_hex(data) != expected:
        c.add("PLAN_HASH_MISMATCH", "plan.json", f"sha256 {sha256_hex(data)} is not the ledger's plan_hash {expected}")
    try:
        plan = parse_plan(data)
    except IntegrityError as exc:
        c.add("PLAN_INVALID", "plan.json", str(exc))
        return
    c.plan = plan
    if plan.run_id != c.run_id:
        c.add("PLAN_INVALID", "plan.json", f"the plan is for run {plan.run_id}")
    if c.intent is not None and plan.intent_fingerprint != intent_fingerprint(c.intent):
        c.add("PLAN_INTENT_MISMATCH", "plan.json", "the plan's intent_fingerprint is not the intent's")


# --------------------------------------------------------------------------- facts + receipts
def check_facts(c: RunContent) -> None:
    """Facts views and receipts: exactly the ones the ledger references, each consistent with the run."""
    referenced = facts_references(c.typed_bodies())
    listed = {p[_FACTS_NAME] for p in c.listed_of(ArtifactKind.FACTS)}
    listed_receipts = {p[_RECEIPTS_NAME] for p in c.listed_of(ArtifactKind.RECEIPTS)}
    for fv in referenced:
        if fv not in listed:
            c.add("FACTS_MISSING", facts_path(fv), "the ledger references this facts view; it is not listed")
    for fv in sorted(listed - set(referenced)):
        c.add("FACTS_UNREFERENCED", facts_path(fv), "no ledger entry references this facts view")
    for fv in sorted(listed_receipts - listed):
        c.add("RECEIPTS_UNREFERENCED", receipts_path(fv), "receipts of a facts view the runpack lacks")
    for fv in sorted(listed):
        _check_view(c, fv, fv in listed_receipts)
    for entry in c.entries:
        fact = recorded_fact(c.bodies.get(entry.seq))
        if fact is not None and not fact.facts_view_uri.endswith(f"/facts/{fact.facts_view_hash}.json"):
            c.add("LEDGER_URI_MISMATCH", ledger_path(entry.seq),
                  f"facts_view_uri {fact.facts_view_uri} does not name {fact.facts_view_hash}")


def _check_view(c: RunContent, fv: str, has_receipts: bool) -> None:
    path = facts_path(fv)
    data = c.contents.get(path)
    if data is None:
        return
    if sha256_hex(data) != fv:
        c.add("FACTS_HASH_MISMATCH", path, f"sha256 {sha256_hex(data)} is not the name {fv}")
    try:
        view = parse_facts_view(data)
    except IntegrityError as exc:
        c.add("FACTS_INVALID", path, str(exc))
        return
    c.views[fv] = view
    if view.run_id != c.run_id:
        c.add("FACTS_INVALID", path, f"the facts view is for run {view.run_id}")
    if c.plan_hash is not None and view.plan_hash != c.plan_hash:
        c.add("FACTS_PLAN_MISMATCH", path, f"plan_hash {view.plan_hash} is not the run's {c.plan_hash}")
    if c.plan is not None and view.policy_rev != c.plan.policy_rev:
        c.add("FACTS_PLAN_MISMATCH", path, "policy_rev differs from the plan's")
    elif c.plan is not None and c.plan_hash == view.plan_hash:
        _check_view_against_plan(c, path, view, data)
    rpath = receipts_path(fv)
    if not has_receipts:
        c.add("RECEIPTS_MISSING", rpath, "every facts view needs its receipts file")
        return
    receipts = c.contents.get(rpath)
    if receipts is not None and receipts != receipts_bytes(view, fv):
        c.add("RECEIPTS_MISMATCH", rpath, "the receipts differ from the facts view's gate receipts")


def _check_view_against_plan(c: RunContent, path: str, view: FactsView, data: bytes) -> None:
    """The facts view must be exactly what its plan and its own receipts make: the format the
    plan implies, every gate's scope as planned and bound to this run's values (instance
    binding), the outputs with their locators and covering gates (contract §4)."""
    if c.plan is None or c.plan_hash is None:
        return
    results = [GateResult(gate_id=r.gate_id, method=r.method, bundle_uri=r.bundle_uri, outcome=GateOutcome.PASS,
                          expected_digest=r.digest, computed_digest=r.digest, member_count=r.member_count,
                          byte_count=r.byte_count, scope=r.scope, bound=r.bound) for r in view.receipts]
    try:
        rebuilt = build_facts_view(c.plan, c.plan_hash, results, supersedes=view.supersedes_facts_view_hash)
    except (EvidenceError, IntegrityError) as exc:
        c.add("FACTS_PLAN_MISMATCH", path, f"the facts view does not follow from its plan: {exc}")
        return
    if facts_view_bytes(rebuilt) != bytes(data):
        c.add("FACTS_PLAN_MISMATCH", path, "the facts view is not what its plan and receipts make "
                                           "(format, scopes, bound values or outputs differ)")


# --------------------------------------------------------------------------- lineage
def check_lineage(c: RunContent) -> None:
    """What each READY supersedes, what each facts view says it supersedes, and what each
    REVOKED repeats, walking the typed bodies in ledger order (see the module docstring).

    :func:`~worker.core.ledger.derive_state` does not look at ``supersedes_facts_view_hash``
    (a READY after a RETRY needs no SUPERSEDED), so without this a READY could name any view.
    """
    pending: str | None = None  # the old view of a SUPERSEDED whose READY has not come yet
    current: ReadyBody | None = None  # the READY in force (None once revoked or quarantined)
    revoked: str | None = None  # the run's last revoked view
    claimed: dict[str, str | None] = {}  # facts view -> the supersedes its first entry records
    for entry in c.entries:
        body, path = c.bodies.get(entry.seq), ledger_path(entry.seq)
        if isinstance(body, SupersededBody):
            pending = body.old_facts_view_hash
            claimed.setdefault(body.new_facts_view_hash, body.old_facts_view_hash)
        elif isinstance(body, RevokedBody):
            _check_revoked(c, path, body, current)
            current, revoked = None, body.facts_view_hash
        elif entry.kind is LedgerKind.QUARANTINED:
            current = None  # contradicting evidence demotes a READY (derive_state)
        elif isinstance(body, ReadyBody):
            fv, named = body.facts_view_hash, body.supersedes_facts_view_hash
            expected: str | None
            if pending is not None:
                expected, why = pending, "the view the SUPERSEDED entry before it replaces"
            elif current is not None and current.facts_view_hash == fv:
                expected, why = current.supersedes_facts_view_hash, "what the READY it repeats supersedes"
            else:
                expected, why = revoked, "the run's last revoked view" if revoked else "nothing (no view was revoked)"
            if named != expected:
                c.add("LEDGER_SUPERSEDES_INVALID", path,
                      f"READY {fv} supersedes {named or 'nothing'}; it must supersede {why}"
                      + (f" ({expected})" if expected else ""))
            pending, current = None, body
            claimed.setdefault(fv, named)
    for fv, view in sorted(c.views.items()):
        if fv in claimed and view.supersedes_facts_view_hash != claimed[fv]:
            c.add("FACTS_SUPERSEDES_MISMATCH", facts_path(fv),
                  f"the facts view supersedes {view.supersedes_facts_view_hash or 'nothing'}, its ledger entry "
                  f"{claimed[fv] or 'nothing'}")


def _check_revoked(c: RunContent, path: str, body: RevokedBody, ready: ReadyBody | None) -> None:
    """A REVOKED entry withdraws the READY in force (``ready``) and repeats its fields, so the
    REVOKED event rebuilt from it alone is that READY's withdrawal."""
    fv = body.facts_view_hash
    if ready is None or ready.facts_view_hash != fv:
        in_force = f"READY {ready.facts_view_hash}" if ready is not None else "no READY"
        c.add("LEDGER_REVOKED_INVALID", path, f"REVOKED {fv} does not withdraw the READY in force ({in_force})")
        return
    differing = [name for name, mine, theirs in (("facts_view_uri", body.facts_view_uri, ready.facts_view_uri),
                                                 ("plan_hash", body.plan_hash, ready.plan_hash),
                                                 ("policy_rev", body.policy_rev, ready.policy_rev))
                 if mine != theirs]
    if differing:
        c.add("LEDGER_REVOKED_INVALID", path, f"REVOKED {fv} differs from the READY it withdraws in: "
                                              f"{', '.join(differing)}")


# --------------------------------------------------------------------------- run.json
def check_run_summary(c: RunContent) -> None:
    """``run.json``: exactly the summary rebuilt from the ledger (needs a state and an intent)."""
    data = c.required("run.json")
    if data is None or c.state is None or c.intent is None:
        return
    try:
        doc = parse_json_strict(data, max_bytes=artifact_cap(ArtifactKind.RUN))
    except (InvalidJSONError, MessageTooLargeError) as exc:
        c.add("RUN_SUMMARY_INVALID", "run.json", str(exc))
        return
    if not isinstance(doc, dict) or not isinstance(doc.get("source"), dict):
        c.add("RUN_SUMMARY_INVALID", "run.json", "run.json is not an object with a source")
        return
    source = {str(k): str(v) for k, v in doc["source"].items()}
    expected = run_summary(c.state, c.entries, c.typed_bodies(), tenant_id=c.intent.tenant_id,
                           namespace=c.intent.namespace, scenario_id=c.intent.scenario_id,
                           ledger_head_sha256=sha256_hex(c.contents[ledger_path(len(c.entries) - 1)]),
                           source=source)
    if canonical_json(expected) != data:
        differing = sorted(k for k in set(expected) | set(doc) if expected.get(k) != doc.get(k))
        c.add("RUN_SUMMARY_MISMATCH", "run.json", f"differs from the ledger in: {', '.join(differing) or 'form'}")
