"""Moved to :mod:`tests.harness.evidence`; kept while test modules still import the old path."""

from tests.harness.evidence import (
    FLAG_NAME,
    INDEX_NAME,
    bundle_digest,
    bundle_uri,
    evidence_root_uri,
    flag_bytes,
    index_bytes,
    member_concat_digest_of,
    upload_bundle_gate,
    upload_member_concat_gate,
)
from tests.harness.servers import s3_config_for

__all__ = [
    "FLAG_NAME",
    "INDEX_NAME",
    "bundle_digest",
    "bundle_uri",
    "evidence_root_uri",
    "flag_bytes",
    "index_bytes",
    "member_concat_digest_of",
    "s3_config_for",
    "upload_bundle_gate",
    "upload_member_concat_gate",
]
