"""The one translation of S3 client faults into :mod:`worker.errors`.

Both client libraries end up here: :func:`translate_boto3_error` (botocore / urllib3 / OS
exceptions) and :func:`translate_obstore_error` (obstore / OS exceptions) read what the
server answered (HTTP status and S3 error code) and hand it to :func:`classify_answer`, the
single table deciding which :class:`~worker.errors.S3Error` an answer becomes. A fault
without an answer (refused, reset, timed out, torn body) is transient; anything unknown fails
closed as :class:`~worker.errors.S3AccessError`. Credential faults — none found, expired, refused
(:data:`CREDENTIAL_CODES`), a failed fetch or refresh — become
:class:`~worker.errors.S3CredentialsError` (or, for a credential endpoint that could not answer,
:class:`~worker.errors.S3UnavailableError`) with one line saying so
(:func:`~worker.adapters.s3.credentials.credential_error`).

Retryability follows from the class: only :class:`~worker.errors.S3UnavailableError` is a
:class:`~worker.errors.RetryableError`, and only it is retried by the adapter.
:func:`with_sse_hint` names the server-side encryption a refused PUT asked for (the class
stays what the answer says).
"""

from __future__ import annotations

import re
from typing import Any, Final, Literal

from worker.adapters.s3.credentials import credential_error
from worker.errors import (
    ObjectLockUnsupportedError,
    ObjectNotFoundError,
    PreconditionFailedError,
    S3AccessError,
    S3CredentialsError,
    S3Error,
    S3UnavailableError,
)

__all__ = [
    "CREDENTIAL_CODES",
    "NOT_FOUND_CODES",
    "NO_OBJECT_LOCK_CODES",
    "PRECONDITION_CODES",
    "RETRYABLE_CODES",
    "ObjectLockCall",
    "classify_answer",
    "client_error_answer",
    "obstore_answer",
    "translate_boto3_error",
    "translate_obstore_error",
    "with_sse_hint",
]

# Error codes that mean "transient, try again" even though the HTTP status is 4xx.
# RequestTimeout is a 400 on AWS; ConditionalRequestConflict (409) is what AWS answers when
# two conditional writes race — a retry then resolves to 412 or success.
RETRYABLE_CODES: Final = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "ConditionalRequestConflict",
        "OperationAborted",
        # The body that arrived does not match its checksum / length: corrupted or torn in
        # transit, so sending it again is the fix (bounded by max_attempts like any retry).
        "BadDigest",
        "IncompleteBody",
    }
)
NOT_FOUND_CODES: Final = frozenset({"NoSuchKey", "NotFound", "404"})
# Codes of an answer refusing the credentials themselves: expired or unknown session token,
# unknown key id, a signature the secret does not produce. Retrying with them cannot help.
CREDENTIAL_CODES: Final = frozenset({
    "ExpiredToken",
    "ExpiredTokenException",
    "TokenRefreshRequired",
    "InvalidToken",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
})
_CREDENTIAL_HINT: Final = "S3 refused the credentials (expired, unknown or wrong): renew or fix them"
PRECONDITION_CODES: Final = frozenset({"PreconditionFailed", "412"})
# Codes S3-compatible servers use when a bucket has no Object Lock (or the server none at all).
NO_OBJECT_LOCK_CODES: Final = frozenset({
    "ObjectLockConfigurationNotFoundError",
    "ObjectLockConfigurationNotFound",
    "NotImplemented",
    "InvalidBucketState",
    "InvalidRequest",
    "XNotImplemented",
})

#: Which Object Lock request an answer belongs to: reading a bucket's configuration, where any
#: 404 / 501 also means "no Object Lock here", or putting an object's retention.
ObjectLockCall = Literal["configuration", "retention"]

_STATUS_RE: Final = re.compile(r"status code: (\d{3})")
_CODE_RE: Final = re.compile(r"<Code>([A-Za-z0-9.]+)</Code>")


def classify_answer(status: int, code: str, *, object_lock: ObjectLockCall | None = None) -> type[S3Error]:
    """The SR error class of an S3 error answer — the one decision table.

    Args:
        status: the HTTP status (0 if unknown).
        code: the S3 error code from the answer's body ("" if none).
        object_lock: the Object Lock request answered, if it was one.

    Returns:
        ObjectLockUnsupportedError, ObjectNotFoundError, PreconditionFailedError,
        S3CredentialsError (a :data:`CREDENTIAL_CODES` answer), S3UnavailableError (the only
        retryable one) or S3AccessError (everything else).
    """
    if code in CREDENTIAL_CODES:
        return S3CredentialsError
    if object_lock is not None and (
        code in NO_OBJECT_LOCK_CODES or (object_lock == "configuration" and status in {404, 501})
    ):
        return ObjectLockUnsupportedError
    # NoSuchBucket is a 404 too, but it is a configuration fault, not an absent object:
    # never "evidence missing".
    if code in NOT_FOUND_CODES or (status == 404 and code != "NoSuchBucket"):
        return ObjectNotFoundError
    if code in PRECONDITION_CODES or status == 412:
        return PreconditionFailedError
    if code in RETRYABLE_CODES or status >= 500 or status == 429:
        return S3UnavailableError
    return S3AccessError


def with_sse_hint(error: S3Error, *, status: int, sse: str | None) -> S3Error:
    """``error`` of a PUT that asked for server-side encryption ``sse``, with a message saying so.

    Endpoints without SSE support refuse every such PUT with an answer that does not say why
    (SeaweedFS 4.48 without an SSE-S3 KEK or a KMS: ``500 InternalError``), so the message
    names the cause. The class is kept: a 500 from AWS is still transient and retried. Only an
    answered PUT (``status`` > 0) gets the hint, and never a 404 / 412 (a missing bucket, an
    existing key: not about encryption).
    """
    if sse is None or status == 0 or status in {404, 412} or isinstance(
            error, (ObjectNotFoundError, PreconditionFailedError)):
        return error
    return type(error)(f"{error}: the endpoint refused a PUT with server-side encryption {sse} (SR_S3_SSE); "
                       "SeaweedFS does unless an SSE-S3 KEK (and, for aws:kms, a KMS) is configured")


# --------------------------------------------------------------------------- boto3
def client_error_answer(exc: BaseException) -> tuple[int, str]:
    """``(HTTP status, S3 error code)`` of a botocore ``ClientError`` (``(0, "")`` if absent)."""
    response: Any = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return 0, ""
    code = str(response.get("Error", {}).get("Code", "") or "")
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return status, code


def translate_boto3_error(exc: BaseException, what: str, *, object_lock: ObjectLockCall | None = None) -> S3Error:
    """Map a botocore / urllib3 / OS exception to the SR hierarchy; never returns a raw one.

    Args:
        exc: what boto3 raised.
        what: the request, for the message (``"GET s3://bucket/key"``).
        object_lock: the Object Lock request this was, if one (see :func:`classify_answer`).
    """
    from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError, ResponseStreamingError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(exc, S3Error):
        return exc
    # Before ClientError: an STS / SSO refusal while fetching credentials is one too.
    credential_fault = credential_error(exc, what)
    if credential_fault is not None:
        return credential_fault
    if isinstance(exc, ClientError):
        status, code = client_error_answer(exc)
        kind = classify_answer(status, code, object_lock=object_lock)
        hint = f": {_CREDENTIAL_HINT}" if kind is S3CredentialsError else ""
        return kind(f"{what}: {code or 'HTTP'} {status}{hint}")
    # Connection refused/reset, DNS, connect/read timeouts, truncated bodies are transient;
    # urllib3 errors can escape StreamingBody.read in some botocore versions.
    transient = (BotoConnectionError, HTTPClientError, ResponseStreamingError, IncompleteReadError, OSError)
    if isinstance(exc, transient) or type(exc).__module__.startswith("urllib3"):
        return S3UnavailableError(f"{what}: {type(exc).__name__}: {exc}")
    # Missing credentials, parameter validation and anything unknown: permanent, fail closed.
    return S3AccessError(f"{what}: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- obstore
def obstore_answer(text: str) -> tuple[int, str]:
    """``(HTTP status, S3 error code)`` that object_store puts into its error text (0 / "").

    object_store reports a non-2xx answer as ``... Server returned non-2xx status code: 503
    Service Unavailable: <?xml ...><Code>SlowDown</Code>...``; a transport failure (refused,
    reset, timed out) has no status at all.
    """
    status_match = _STATUS_RE.search(text)
    code_match = _CODE_RE.search(text)
    return (int(status_match.group(1)) if status_match else 0, code_match.group(1) if code_match else "")


def translate_obstore_error(exc: BaseException, what: str) -> S3Error:
    """Map an obstore (or OS) exception to the SR hierarchy; never returns a raw one.

    Args:
        exc: what obstore raised.
        what: the request, for the message (``"GET s3://bucket/key"``).
    """
    if isinstance(exc, S3Error):
        return exc
    text = str(exc)
    status, code = obstore_answer(text)
    kind = _obstore_kind(exc, status, code)
    if kind in {PreconditionFailedError, ObjectNotFoundError}:
        return kind(f"{what}: {code or type(exc).__name__} {status or ''}".rstrip())
    if kind is S3CredentialsError:
        # The answer's body echoes the access key id and request details: the code says it all.
        return kind(f"{what}: {code} {status or ''}: {_CREDENTIAL_HINT}")
    # One line: object_store's text carries the answer's XML body, newlines included.
    excerpt = " ".join(text[:300].split())
    return kind(f"{what}: {code or type(exc).__name__} {status or ''}: {excerpt}")


def _obstore_kind(exc: BaseException, status: int, code: str) -> type[S3Error]:
    import obstore.exceptions as oe

    if code in CREDENTIAL_CODES:
        return S3CredentialsError
    # obstore's exception classes say what the answer was even when the text has no status.
    if isinstance(exc, (oe.AlreadyExistsError, oe.PreconditionError)):
        return PreconditionFailedError
    # obstore raises the builtin FileNotFoundError for a 404 (NoSuchBucket included).
    if isinstance(exc, (FileNotFoundError, oe.NotFoundError)):
        return classify_answer(404, code)
    if isinstance(exc, (oe.PermissionDeniedError, oe.UnauthenticatedError)):
        return S3AccessError
    if status or code:
        return classify_answer(status, code)
    # No HTTP answer: the request never got one (refused, reset, timeout, torn body).
    # Invalid path, unsupported operation, configuration: fail closed.
    transport = isinstance(exc, (oe.GenericError, TimeoutError, ConnectionError, OSError))
    return S3UnavailableError if transport else S3AccessError
