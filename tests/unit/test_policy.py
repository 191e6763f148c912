"""Policy loading, validation, policy_rev and required-gate closure."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.core.policy import MAX_POLICY_BYTES, GateMethod, GateSpec, Policy, build_policy, load_policy
from worker.errors import PolicyError, UnknownOutputError

EXAMPLE_REV = "c7f341ec1713c41ee1d8b9c6ae58158378f16b100c49ba6f2321a68a55d661d6"
#: The example policy's rev before gate_6B was scoped: an unscoped policy keeps its rev.
UNSCOPED_REV = "4718fad9777be10bf1c1f464514302f0c722f92331de37820c44841e1bb35eb1"


def test_example_policy(policy: Policy) -> None:
    assert set(policy.outputs) == {"transactions", "accounts"}
    assert policy.gates["gate_3A"].method is GateMethod.SHA256_MEMBER_DIGEST_CONCAT
    assert policy.gates["gate_6B"].method is GateMethod.SHA256_BUNDLE_DIGEST
    assert policy.gates["gate_6B"].depends_on == ("gate_3A",)
    assert policy.gates["gate_6B"].bundle == "gates/6B"
    assert policy.policy_rev == EXAMPLE_REV


def test_required_gates_transitive(policy: Policy) -> None:
    assert policy.required_gates(["transactions"]) == ("gate_3A", "gate_6B")
    assert policy.required_gates(["accounts"]) == ("gate_3A",)
    assert policy.required_gates(["accounts", "transactions"]) == ("gate_3A", "gate_6B")


def test_unknown_output(policy: Policy) -> None:
    with pytest.raises(UnknownOutputError) as info:
        policy.required_gates(["transactions", "ledgers"])
    assert info.value.code == "UNKNOWN_OUTPUT"
    assert "ledgers" in str(info.value)


def test_policy_is_immutable(policy: Policy) -> None:
    with pytest.raises(TypeError):
        policy.outputs["x"] = ("gate_3A",)  # type: ignore[index]


def test_rev_is_formatting_insensitive(policy_bytes: bytes) -> None:
    reordered = b"""
# different comments and order
[gates.gate_6B]
scope = ["seed", "scenario_id", "parameter_hash", "manifest_fingerprint"]
depends_on = [ "gate_3A" ]
bundle = "gates/6B"
method = "sha256_bundle_digest"

[gates.gate_3A]
bundle = "gates/3A"
method = "sha256_member_digest_concat"
depends_on = []

[outputs]
accounts = { gates = ["gate_3A"] }
transactions = { gates = ["gate_6B"] }
"""
    assert load_policy(reordered).policy_rev == load_policy(policy_bytes).policy_rev


def test_rev_changes_with_content(policy_bytes: bytes) -> None:
    changed = policy_bytes.replace(b'bundle = "gates/6B"', b'bundle = "gates/6C"')
    assert load_policy(changed).policy_rev != EXAMPLE_REV


GOOD_GATE = '[gates.g]\nmethod = "sha256_bundle_digest"\nbundle = "b"\n'


@pytest.mark.parametrize(
    "text",
    [
        '[outputs.o]\ngates = ["g"]\n[gates.g]\nmethod = "md5"\nbundle = "b"\n',
        '[outputs.o]\ngates = ["g"]\n[gates.g]\nbundle = "b"\n',
        '[outputs.o]\ngates = ["g"]\n[gates.g]\nmethod = "sha256_bundle_digest"\n',
        '[outputs.o]\ngates = ["nope"]\n' + GOOD_GATE,
        '[outputs.o]\ngates = ["g"]\n[gates.g]\nmethod = "sha256_bundle_digest"\nbundle = "b"\ndepends_on = ["x"]\n',
        '[outputs.o]\ngates = ["g"]\n[gates.g]\nmethod = "sha256_bundle_digest"\nbundle = "b"\ndepends_on = ["g"]\n',
        '[outputs.o]\ngates = ["a"]\n'
        '[gates.a]\nmethod = "sha256_bundle_digest"\nbundle = "a"\ndepends_on = ["b"]\n'
        '[gates.b]\nmethod = "sha256_bundle_digest"\nbundle = "b"\ndepends_on = ["c"]\n'
        '[gates.c]\nmethod = "sha256_bundle_digest"\nbundle = "c"\ndepends_on = ["a"]\n',
        '[outputs.o]\ngates = ["g"]\n[gates.g]\nmethod = "sha256_bundle_digest"\nbundle = "../b"\n',
        '[outputs.o]\ngates = ["g"]\n[gates.g]\nmethod = "sha256_bundle_digest"\nbundle = "/abs"\n',
        '[outputs.o]\ngates = ["g"]\n[gates.g]\nmethod = "sha256_bundle_digest"\nbundle = "s3://x/y"\n',
        '[outputs.o]\ngates = ["g"]\n[gates.g]\nmethod = "sha256_bundle_digest"\nbundle = ""\n',
        '[outputs.o]\ngates = ["g"]\n[gates.g]\nmethod = "sha256_bundle_digest"\nbundle = 5\n',
        '[outputs.o]\ngates = ["g"]\n[gates.g]\nmethod = "sha256_bundle_digest"\nbundle = "b"\nextra = 1\n',
        "[outputs.o]\ngates = []\n" + GOOD_GATE,
        '[outputs.o]\ngates = ["g", "g"]\n' + GOOD_GATE,
        '[outputs.o]\ngates = "g"\n' + GOOD_GATE,
        "[outputs.o]\n" + GOOD_GATE,
        '[outputs."a/b"]\ngates = ["g"]\n' + GOOD_GATE,
        '[outputs.o]\ngates = ["g"]\nextra = 1\n' + GOOD_GATE,
        '[outputs.o]\ngates = ["g"]\n[gates."../g"]\nmethod = "sha256_bundle_digest"\nbundle = "b"\n',
        'version = 2\n[outputs.o]\ngates = ["g"]\n' + GOOD_GATE,
        GOOD_GATE,
        "outputs = 5\n",
        "[outputs.o\n",
        "",
    ],
)
def test_invalid_policies(text: str) -> None:
    with pytest.raises(PolicyError):
        load_policy(text.encode())


def test_invalid_bytes() -> None:
    with pytest.raises(PolicyError):
        load_policy(b"\xff\xfe")
    with pytest.raises(PolicyError):
        load_policy(b"#" * (MAX_POLICY_BYTES + 1))
    with pytest.raises(PolicyError):
        load_policy("text")  # type: ignore[arg-type]


def test_deep_dependency_chain_no_recursion_error() -> None:
    n = 3000
    gates = [
        GateSpec(
            gate_id=f"g{i}",
            method=GateMethod.SHA256_BUNDLE_DIGEST,
            bundle=f"b/{i}",
            depends_on=(f"g{i + 1}",) if i + 1 < n else (),
        )
        for i in range(n)
    ]
    policy = build_policy({"o": ["g0"]}, gates)
    assert len(policy.required_gates(["o"])) == n


def test_duplicate_gate_in_build() -> None:
    spec = GateSpec(gate_id="g", method=GateMethod.SHA256_BUNDLE_DIGEST, bundle="b")
    with pytest.raises(PolicyError):
        build_policy({"o": ["g"]}, [spec, spec])


@given(st.binary(max_size=300))
def test_random_bytes_only_policy_error(data: bytes) -> None:
    try:
        load_policy(data)
    except PolicyError:
        pass


@given(st.data())
def test_closure_properties(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 8))
    gates = []
    for i in range(n):
        # Dependencies only on higher indexes: always acyclic.
        deps = data.draw(st.lists(st.integers(i + 1, n - 1), unique=True, max_size=3)) if i < n - 1 else []
        gates.append(
            GateSpec(
                gate_id=f"g{i}",
                method=GateMethod.SHA256_BUNDLE_DIGEST,
                bundle=f"b{i}",
                depends_on=tuple(f"g{d}" for d in deps),
            )
        )
    policy = build_policy({"o": ["g0"]}, gates)
    required = policy.required_gates(["o"])
    assert list(required) == sorted(required)
    for gate_id in required:
        assert set(policy.gates[gate_id].depends_on) <= set(required)


def test_scope_is_validated_sorted_and_left_out_of_the_rev_when_empty(policy_bytes: bytes) -> None:
    policy = load_policy(policy_bytes)
    assert policy.gates["gate_6B"].scope == ("manifest_fingerprint", "parameter_hash", "scenario_id", "seed")
    assert policy.gates["gate_3A"].scope == ()
    unscoped = b"\n".join(line for line in policy_bytes.splitlines() if not line.startswith(b"scope"))
    assert load_policy(unscoped).policy_rev == UNSCOPED_REV
    assert "scope" not in load_policy(unscoped).normalised()["gates"]["gate_6B"]
    narrower = policy_bytes.replace(b'"parameter_hash", ', b"")
    assert load_policy(narrower).policy_rev not in (EXAMPLE_REV, UNSCOPED_REV)
    for bad, message in ((b'["seed", "colour"]', "unknown field"), (b'["seed", "seed"]', "duplicate"),
                         (b'"seed"', "array of strings")):
        broken = policy_bytes.replace(b'["manifest_fingerprint", "parameter_hash", "scenario_id", "seed"]', bad)
        with pytest.raises(PolicyError, match=message):
            load_policy(broken)
    run_scoped = policy_bytes.replace(b'"scenario_id", "seed"]', b'"run_id", "scenario_id", "seed"]')
    assert "run_id" in load_policy(run_scoped).gates["gate_6B"].scope
