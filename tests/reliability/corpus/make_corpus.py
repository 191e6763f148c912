"""Regenerate the hostile-input corpus files next to this script (``python make_corpus.py``).

The files are committed; this script documents exactly how each was made. Inputs that would
be too large for the repository (100k-deep nesting, 100k-entry arrays, multi-MiB documents)
are generated at test time instead (``tests/reliability/test_hostile_input.py``).
"""

from __future__ import annotations

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


if __name__ == "__main__":
    main()
