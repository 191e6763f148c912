"""Regenerate the hostile-input corpus files next to this script (``python make_corpus.py``).

The files are committed; this script documents exactly how each was made. Inputs that would
be too large for the repository (100k-deep nesting, 100k-entry arrays, multi-MiB documents)
are generated at test time instead (``tests/reliability/test_hostile_input.py``).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
HEX = "ab" * 32
SI = "\u0000"  # NUL


def _entry(path: str, digest: str = HEX) -> dict[str, str]:
    return {"path": path, "sha256_hex": digest}


JSON_DOCS: dict[str, bytes] = {
    "nan.json": b"[NaN]",
    "infinity.json": b'{"a": -Infinity}',
    "float.json": b"[1.5]",
    "exponent.json": b"[1e400]",
    "duplicate_keys.json": b'{"a": 1, "a": 2}',
    "lone_surrogate.json": b'["\\ud800"]',
    "bom.json": b"\xef\xbb\xbf[]",
    "invalid_utf8.json": b'["\xff\xfe"]',
    "overlong_utf8.json": b'["\xc0\xaf"]',
    "raw_nul_in_string.json": b'["a\x00b"]',
    "raw_control_in_string.json": b'["a\x01\x1fb"]',
    "trailing_garbage.json": b"[] []",
    "empty.json": b"",
    "only_whitespace.json": b" \n\t ",
    "unterminated.json": b'[{"path": "a"',
    "huge_int_literal.json": b"[" + b"9" * 5000 + b"]",
    "single_quotes.json": b"{'path': 'a'}",
    "comment.json": b"[/* x */]",
    "deep_64.json": b"[" * 70 + b"]" * 70,
}

INDEX_DOCS: dict[str, object] = {
    "traversal.json": [_entry("../other-tenant/secret.csv")],
    "traversal_inner.json": [_entry("a/../../b")],
    "absolute.json": [_entry("/etc/passwd")],
    "backslash.json": [_entry("a\\..\\b")],
    "nul_in_path.json": [_entry(f"a{SI}b")],
    "dot_segment.json": [_entry("./a")],
    "dotdot_only.json": [_entry("..")],
    "double_slash.json": [_entry("a//b")],
    "trailing_slash.json": [_entry("a/")],
    "empty_path.json": [_entry("")],
    "overlong_segment.json": [_entry("a" * 129)],
    "overlong_key.json": [_entry("/".join(["abcdefgh"] * 130))],
    "flag_as_member.json": [_entry("_passed.flag")],
    "index_as_member.json": [_entry("index.json")],
    "duplicate_path.json": [_entry("a"), _entry("a")],
    "uppercase_digest.json": [_entry("a", HEX.upper())],
    "short_digest.json": [_entry("a", HEX[:63])],
    "extra_field.json": [{"path": "a", "sha256_hex": HEX, "size": 1}],
    "missing_field.json": [{"path": "a"}],
    "path_not_string.json": [{"path": ["a"], "sha256_hex": HEX}],
    "digest_not_string.json": [{"path": "a", "sha256_hex": 1}],
    "empty_array.json": [],
    "object_not_array.json": _entry("a"),
    "unicode_division_slash.json": [_entry("a\u2215..\u2215b")],
    "fullwidth_dots.json": [_entry("\uff0e\uff0e/b")],
    "newline_in_path.json": [_entry("a\nb")],
    "space_in_path.json": [_entry("a b")],
    "percent_encoded.json": [_entry("a%2F..%2Fb")],
    "nested_entry.json": [[_entry("a")]],
}

FLAGS: dict[str, bytes] = {
    "crlf.flag": f"sha256_hex={HEX}\r\n".encode(),
    "two_newlines.flag": f"sha256_hex={HEX}\n\n".encode(),
    "second_line.flag": f"sha256_hex={HEX}\nsha256_hex={HEX}\n".encode(),
    "bom.flag": b"\xef\xbb\xbf" + f"sha256_hex={HEX}\n".encode(),
    "uppercase.flag": f"sha256_hex={HEX.upper()}\n".encode(),
    "short.flag": f"sha256_hex={HEX[:63]}\n".encode(),
    "long.flag": f"sha256_hex={HEX}0\n".encode(),
    "space.flag": f"sha256_hex = {HEX}\n".encode(),
    "leading_space.flag": f" sha256_hex={HEX}\n".encode(),
    "nul.flag": f"sha256_hex={HEX}\x00\n".encode(),
    "nul_prefix.flag": f"\x00sha256_hex={HEX}\n".encode(),
    "md5.flag": b"md5_hex=" + b"a" * 32 + b"\n",
    "empty.flag": b"",
    "json.flag": json.dumps({"sha256_hex": HEX}).encode(),
    "latin1.flag": b"sha256_hex=" + b"\xe9" * 64 + b"\n",
    "huge.flag": f"sha256_hex={HEX}\n".encode() + b"#" * 4096,
}

POLICIES: dict[str, str] = {
    "traversal_bundle.toml": '[outputs.o]\ngates=["g"]\n[gates.g]\nmethod="sha256_bundle_digest"\n'
                             'bundle="../t2/gates"\n',
    "absolute_bundle.toml": '[outputs.o]\ngates=["g"]\n[gates.g]\nmethod="sha256_bundle_digest"\nbundle="/etc"\n',
    "nul_bundle.toml": '[outputs.o]\ngates=["g"]\n[gates.g]\nmethod="sha256_bundle_digest"\nbundle="a\\u0000b"\n',
    "backslash_bundle.toml": '[outputs.o]\ngates=["g"]\n[gates.g]\nmethod="sha256_bundle_digest"\nbundle="a\\\\b"\n',
    "slash_gate_id.toml": '[outputs.o]\ngates=["a/b"]\n[gates."a/b"]\nmethod="sha256_bundle_digest"\nbundle="x"\n',
    "dotdot_gate_id.toml": '[outputs.o]\ngates=[".."]\n[gates.".."]\nmethod="sha256_bundle_digest"\nbundle="x"\n',
    "overlong_gate_id.toml": f'[outputs.o]\ngates=["{"g" * 129}"]\n[gates.{"g" * 129}]\n'
                             'method="sha256_bundle_digest"\nbundle="x"\n',
    "cycle.toml": '[outputs.o]\ngates=["a"]\n[gates.a]\nmethod="sha256_bundle_digest"\nbundle="a"\ndepends_on=["b"]\n'
                  '[gates.b]\nmethod="sha256_bundle_digest"\nbundle="b"\ndepends_on=["a"]\n',
    "self_cycle.toml": '[outputs.o]\ngates=["a"]\n[gates.a]\nmethod="sha256_bundle_digest"\nbundle="a"\n'
                       'depends_on=["a"]\n',
    "dangling_dependency.toml": '[outputs.o]\ngates=["a"]\n[gates.a]\nmethod="sha256_bundle_digest"\nbundle="a"\n'
                                'depends_on=["nope"]\n',
    "dangling_output_gate.toml": '[outputs.o]\ngates=["nope"]\n',
    "unknown_method.toml": '[outputs.o]\ngates=["a"]\n[gates.a]\nmethod="md5"\nbundle="a"\n',
    "no_outputs.toml": '[gates.a]\nmethod="sha256_bundle_digest"\nbundle="a"\n',
    "output_without_gates.toml": '[outputs.o]\ngates=[]\n',
    "gates_not_a_list.toml": '[outputs.o]\ngates="a"\n[gates.a]\nmethod="sha256_bundle_digest"\nbundle="a"\n',
    "gates_of_ints.toml": '[outputs.o]\ngates=[1]\n',
    "unknown_top_key.toml": 'admin = true\n[outputs.o]\ngates=["a"]\n[gates.a]\nmethod="sha256_bundle_digest"\n'
                            'bundle="a"\n',
    "unknown_gate_key.toml": '[outputs.o]\ngates=["a"]\n[gates.a]\nmethod="sha256_bundle_digest"\nbundle="a"\n'
                             'skip_verification=true\n',
    "bundle_not_string.toml": '[outputs.o]\ngates=["a"]\n[gates.a]\nmethod="sha256_bundle_digest"\nbundle=["a"]\n',
    "duplicate_table.toml": '[outputs.o]\ngates=["a"]\n[outputs.o]\ngates=["a"]\n',
    "invalid_toml.toml": '[outputs.o\ngates=["a"]\n',
    "outputs_not_table.toml": 'outputs = 1\n',
    "empty.toml": "",
}

URIS = [
    # (evidence_root, why it must be refused for tenant "t1" with default bucket "sr-bucket")
    "s3://sr-bucket/evidence/t1/../t2/x",
    "s3://sr-bucket/evidence/t1/./x",
    "s3://sr-bucket/evidence/t1//x",
    "s3://sr-bucket//evidence/t1/x",
    "s3://sr-bucket/evidence/t2/x",
    "s3://sr-bucket/evidence/t10/x",
    "s3://sr-bucket/evidence/t1%2F..%2Ft2",
    "s3://sr-bucket/evidence/t1\\..\\t2",
    "s3://sr-bucket/evidence/t1\u0000/x",
    "s3://sr-bucket/evidence/t1 /x",
    "s3://sr-bucket/evidence",
    "s3://sr-bucket/",
    "s3://sr-bucket",
    "s3://other-bucket/evidence/t1/x",
    "S3://sr-bucket/evidence/t1/x",
    "s3:/sr-bucket/evidence/t1/x",
    "http://sr-bucket/evidence/t1/x",
    "file:///etc/passwd",
    "s3://sr-bucket/evidence/t1/x?versionId=1",
    "s3://sr-bucket/evidence/t1/x#frag",
    "s3://SR-BUCKET/evidence/t1/x",
    "s3://sr-bucket/evidence/T1/x",
    "s3://sr-bucket/evidence/t1\u2215..\u2215t2",
    "s3://sr-bucket/evidence/\uff54\uff11/x",
    "s3://sr-bucket/evidence/t1/" + "a" * 129,
    "s3://sr-bucket/evidence/t1/" + "/".join(["abcdefgh"] * 140),
    " s3://sr-bucket/evidence/t1/x",
    "s3://sr-bucket/evidence/t1/x\n",
    "",
]


#: ``sr-signature`` header values (``signature/*.hdr``), every one refused for an intent of tenant
#: "t1" whose key id is "t1-2026" (tests/reliability/test_hostile_signatures.py). Headers that
#: depend on the signed bytes or on real keys (a flipped bit, another tenant's valid signature,
#: 1 MiB, two headers) are made at test time.
SIG_B64 = base64.b64encode(bytes(range(64))).decode()  # well-formed, but not a signature of anything
SIG_GOOD_SHAPE = f"key=t1-2026;ed25519={SIG_B64}"
SIGNATURE_HEADERS: dict[str, bytes] = {
    "empty.hdr": b"",
    "space.hdr": b" ",
    "key_only.hdr": b"key=t1-2026",
    "empty_signature.hdr": b"key=t1-2026;ed25519=",
    "empty_key_id.hdr": f"key=;ed25519={SIG_B64}".encode(),
    "wrong_prefix.hdr": f"sig=t1-2026;ed25519={SIG_B64}".encode(),
    "uppercase_key.hdr": f"KEY=t1-2026;ed25519={SIG_B64}".encode(),
    "uppercase_algorithm.hdr": f"key=t1-2026;ED25519={SIG_B64}".encode(),
    "other_algorithm.hdr": f"key=t1-2026;rsa={SIG_B64}".encode(),
    "swapped_fields.hdr": f"ed25519={SIG_B64};key=t1-2026".encode(),
    "comma_separator.hdr": f"key=t1-2026,ed25519={SIG_B64}".encode(),
    "spaces_around.hdr": f"key = t1-2026; ed25519 = {SIG_B64}".encode(),
    "leading_space.hdr": f" {SIG_GOOD_SHAPE}".encode(),
    "trailing_newline.hdr": f"{SIG_GOOD_SHAPE}\n".encode(),
    "trailing_crlf.hdr": f"{SIG_GOOD_SHAPE}\r\n".encode(),
    "trailing_semicolon.hdr": f"{SIG_GOOD_SHAPE};".encode(),
    "trailing_nul.hdr": f"{SIG_GOOD_SHAPE}\x00".encode(),
    "nul_prefix.hdr": f"\x00{SIG_GOOD_SHAPE}".encode(),
    "bom.hdr": b"\xef\xbb\xbf" + SIG_GOOD_SHAPE.encode(),
    "bad_base64.hdr": ("key=t1-2026;ed25519=" + "!" * 86 + "==").encode(),
    "urlsafe_base64.hdr": ("key=t1-2026;ed25519=" + base64.urlsafe_b64encode(b"\xfb\xff" * 32).decode()).encode(),
    "unpadded_base64.hdr": f"key=t1-2026;ed25519={SIG_B64.rstrip('=')}".encode(),
    "extra_padding.hdr": f"{SIG_GOOD_SHAPE}=".encode(),
    "newline_in_base64.hdr": f"key=t1-2026;ed25519={SIG_B64[:40]}\n{SIG_B64[40:]}".encode(),
    "hex_signature.hdr": f"key=t1-2026;ed25519={bytes(range(64)).hex()}".encode(),
    "short_signature.hdr": f"key=t1-2026;ed25519={base64.b64encode(bytes(63)).decode()}".encode(),
    "long_signature.hdr": f"key=t1-2026;ed25519={base64.b64encode(bytes(65)).decode()}".encode(),
    "garbage_signature.hdr": SIG_GOOD_SHAPE.encode(),
    "zero_signature.hdr": f"key=t1-2026;ed25519={base64.b64encode(bytes(64)).decode()}".encode(),
    "ff_signature.hdr": b"key=t1-2026;ed25519=" + base64.b64encode(b"\xff" * 64),
    "unknown_key.hdr": f"key=nobody-2026;ed25519={SIG_B64}".encode(),
    "other_tenant_key_id.hdr": f"key=t2-2026;ed25519={SIG_B64}".encode(),
    "operator_key_id.hdr": f"key=alice-2026;ed25519={SIG_B64}".encode(),
    "engine_key_id.hdr": f"key=engine-1-2026;ed25519={SIG_B64}".encode(),
    "key_id_traversal.hdr": f"key=../t1-2026;ed25519={SIG_B64}".encode(),
    "key_id_overlong.hdr": f"key={'a' * 129};ed25519={SIG_B64}".encode(),
    "key_id_nul.hdr": f"key=t1-2026\x00;ed25519={SIG_B64}".encode(),
    "key_id_utf8.hdr": f"key=t1-2026\u00e9;ed25519={SIG_B64}".encode(),
    "key_id_fullwidth.hdr": f"key=\uff54\uff11-2026;ed25519={SIG_B64}".encode(),
    "latin1_signature.hdr": b"key=t1-2026;ed25519=" + b"\xe9" * 88,
    "invalid_utf8.hdr": b"key=t1-2026;ed25519=\xc0\xaf" + SIG_B64[2:].encode(),
    "fullwidth_equals.hdr": f"key\uff1dt1-2026;ed25519={SIG_B64}".encode(),
    "two_in_one_value.hdr": f"{SIG_GOOD_SHAPE};{SIG_GOOD_SHAPE}".encode(),
    "percent_encoded.hdr": f"key%3Dt1-2026%3Bed25519%3D{SIG_B64}".encode(),
    "json.hdr": json.dumps({"key": "t1-2026", "ed25519": SIG_B64}).encode(),
    "just_over_limit.hdr": f"key={'a' * 128};ed25519={SIG_B64}".encode() + b" " * 284,  # 513 bytes
}


def main() -> None:
    for sub, docs in (("json", JSON_DOCS), ("flag", FLAGS)):
        (HERE / sub).mkdir(exist_ok=True)
        for name, data in docs.items():
            (HERE / sub / name).write_bytes(data)
    (HERE / "index").mkdir(exist_ok=True)
    for name, doc in INDEX_DOCS.items():
        (HERE / "index" / name).write_bytes(json.dumps(doc).encode())
    (HERE / "policy").mkdir(exist_ok=True)
    for name, text in POLICIES.items():
        (HERE / "policy" / name).write_text(text)
    (HERE / "evidence_roots.json").write_text(json.dumps(URIS, indent=1) + "\n")
    (HERE / "signature").mkdir(exist_ok=True)
    for name, data in SIGNATURE_HEADERS.items():
        (HERE / "signature" / name).write_bytes(data)


if __name__ == "__main__":
    main()
