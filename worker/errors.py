"""The one exception hierarchy of Scenario Runner.

Every error SR raises on purpose derives from :class:`SRError`. Two independent axes
classify it:

* **retryability** — :class:`RetryableError` (a transient fault of a server: retry with
  bounded backoff) versus :class:`PermanentError` (retrying cannot help: dead-letter,
  reject, fail or quarantine);
* **system** — which boundary produced it (Kafka, Postgres, S3, input validation, the
  embedded stack).

Adapters translate third-party exceptions into these at their edge with
``raise ... from exc``; tenacity policies retry only :class:`RetryableError`.

Each class carries a stable ``code`` used as the ``sr-error-class`` DLQ header and as a
``reason_code`` where it becomes a run status.
"""

from __future__ import annotations

from collections.abc import Iterable


class SRError(Exception):
    """Root of every error Scenario Runner raises deliberately."""

    code: str = "SR_ERROR"


class RetryableError(SRError):
    """A transient fault: the same operation may succeed if retried later."""

    code = "RETRYABLE"


class PermanentError(SRError):
    """A fault that retrying cannot fix (bad input, integrity violation, fencing)."""

    code = "PERMANENT"


# --------------------------------------------------------------------------- input
class InputError(PermanentError):
    """Hostile or malformed input: it gets a defined outcome, never a crash."""

    code = "INVALID_INPUT"


class DecodeError(InputError):
    """A message's bytes are not a valid encoding of a known schema."""

    code = "DECODE_ERROR"


class UnknownSchemaError(DecodeError):
    """The message names a schema fingerprint or registry id SR does not know."""

    code = "UNKNOWN_SCHEMA"


class MessageTooLargeError(InputError):
    """A message or object exceeds its configured byte cap."""

    code = "MESSAGE_TOO_LARGE"


class IntentInvalidError(InputError):
    """A decoded intent or trigger fails semantic validation."""

    code = "INTENT_INVALID"


class CanonicalJSONError(InputError):
    """A value cannot be represented as canonical JSON (NaN, Infinity, bad key type...)."""

    code = "CANONICAL_JSON"


class UnsafeKeyError(InputError):
    """An object-key segment is empty, too long, or could escape its prefix."""

    code = "UNSAFE_KEY"


class PolicyError(PermanentError):
    """The policy file is malformed or references unknown gates/methods."""

    code = "POLICY_INVALID"


class ConfigError(PermanentError):
    """Configuration is missing or invalid."""

    code = "CONFIG_INVALID"


class UnauthenticatedError(InputError):
    """A message that must be signed (contract §10) is unsigned, malformed, signed by a key
    that may not sign it, or its signature does not match its bytes: REJECTED + DLQ copy."""

    code = "UNAUTHENTICATED"


class AuthorizationError(PermanentError):
    """An operator or tenant is not allowed to do what it asked."""

    code = "FORBIDDEN"


# --------------------------------------------------------------------------- evidence
class EvidenceError(PermanentError):
    """Evidence is unusable; ``reason_code`` says how the run is classified."""

    code = "EVIDENCE_ERROR"


class EvidenceRootForbiddenError(EvidenceError):
    """The intent's evidence_root is outside the tenant's allowed prefixes."""

    code = "EVIDENCE_ROOT_FORBIDDEN"


# --------------------------------------------------------------------------- kafka
class KafkaError(SRError):
    """A fault at the Kafka boundary."""

    code = "KAFKA_ERROR"


class KafkaUnavailableError(KafkaError, RetryableError):
    """The broker could not be reached or did not acknowledge in time."""

    code = "KAFKA_UNAVAILABLE"


class KafkaFatalError(KafkaError, PermanentError):
    """A non-retriable client error (fenced producer, authorization, bad config)."""

    code = "KAFKA_FATAL"


# --------------------------------------------------------------------------- postgres
class PostgresError(SRError):
    """A fault at the Postgres boundary."""

    code = "POSTGRES_ERROR"


class PostgresUnavailableError(PostgresError, RetryableError):
    """Postgres could not be reached, or the connection dropped mid-operation."""

    code = "POSTGRES_UNAVAILABLE"


class LeaseError(PostgresError, PermanentError):
    """A lease operation failed in a way the caller must not retry blindly."""

    code = "LEASE_ERROR"


class LeaseBusyError(LeaseError):
    """Another worker holds the run's advisory lock right now."""

    code = "LEASE_BUSY"


class StaleEpochError(LeaseError):
    """A write carried a lease epoch older than the current one: the writer was fenced."""

    code = "STALE_EPOCH"


class LeaseLostError(LeaseError):
    """The session holding the advisory lock is gone (connection lost, server restart)."""

    code = "LEASE_LOST"


# --------------------------------------------------------------------------- s3
class S3Error(SRError):
    """A fault at the object-store boundary."""

    code = "S3_ERROR"


class S3UnavailableError(S3Error, RetryableError):
    """The object store could not be reached or answered 5xx / throttled."""

    code = "S3_UNAVAILABLE"


class ObjectNotFoundError(S3Error, PermanentError):
    """The requested object does not exist."""

    code = "NOT_FOUND"


class PreconditionFailedError(S3Error, PermanentError):
    """A conditional write lost (412): the key exists, or its ETag changed."""

    code = "PRECONDITION_FAILED"


class DriftError(S3Error, PermanentError):
    """A write-once key already holds different bytes: truth drifted, fail closed."""

    code = "DRIFT"


class IntegrityError(S3Error, PermanentError):
    """Stored bytes do not match their recorded hash, or the ledger chain is broken."""

    code = "INTEGRITY"


class FactsViewMismatchError(IntegrityError):
    """A READY names a facts view that is missing, or whose bytes do not hash to its
    ``facts_view_hash`` or describe another run (what a downstream reader must refuse)."""

    code = "FACTS_VIEW_MISMATCH"


class S3AccessError(S3Error, PermanentError):
    """Access denied, bad bucket, or another non-transient client error."""

    code = "S3_ACCESS"


class S3CredentialsError(S3AccessError):
    """No usable S3 credentials: the SDK's default chain found none, a profile or SSO session
    is missing or expired, or S3 refused the ones sent (``ExpiredToken``, ``InvalidAccessKeyId``).
    Permanent: a person must provide or renew them. The message never repeats a secret."""

    code = "S3_CREDENTIALS"


# --------------------------------------------------------------------------- embedded stack
class StackError(SRError):
    """The embedded development stack could not be started."""

    code = "STACK_ERROR"


class BinaryMissingError(StackError):
    """A server binary is not installed (names the extra that provides it)."""

    code = "BINARY_MISSING"


class PortInUseError(StackError):
    """A requested port is already bound by another process."""

    code = "PORT_IN_USE"


class ServerUnhealthyError(StackError):
    """A server process exited or did not become healthy in time."""

    code = "SERVER_UNHEALTHY"


# --------------------------------------------------------------------------- additions (pure core, codec)
class InvalidJSONError(InputError):
    """Bytes are not strict JSON: bad UTF-8, syntax, NaN/Infinity, duplicate keys, too deep."""

    code = "INVALID_JSON"


class EncodeError(PermanentError):
    """A datum does not conform to the Avro schema it is being encoded with (a caller bug)."""

    code = "ENCODE_ERROR"


class SchemaRegistryError(SRError):
    """A fault at the schema-registry boundary."""

    code = "SCHEMA_REGISTRY_ERROR"


class SchemaRegistryUnavailableError(SchemaRegistryError, RetryableError):
    """The schema registry could not be reached or answered 5xx."""

    code = "SCHEMA_REGISTRY_UNAVAILABLE"


class SchemaRegistryRejectedError(SchemaRegistryError, PermanentError):
    """The schema registry refused a request (4xx other than an unknown id)."""

    code = "SCHEMA_REGISTRY_REJECTED"


class UnknownOutputError(EvidenceError):
    """An intent asks for an output the policy does not define."""

    code = "UNKNOWN_OUTPUT"


class BadFlagError(EvidenceError):
    """A gate's ``_passed.flag`` is not exactly one ``sha256_hex=<hex64>`` line."""

    code = "BAD_FLAG"


class BadIndexError(EvidenceError):
    """A gate's ``index.json`` is malformed, unsafe, duplicated or oversized."""

    code = "BAD_INDEX"


class RunNotFoundError(PostgresError, PermanentError):
    """The run id is not in the index (a lease or trigger named a run SR never admitted)."""

    code = "RUN_NOT_FOUND"


class HealthServerError(PermanentError):
    """The worker's health/metrics HTTP server could not be started (e.g. port in use)."""

    code = "HEALTH_SERVER_ERROR"


class NotReadyError(RetryableError):
    """A component has not finished starting (a readiness check that will pass later)."""

    code = "NOT_READY"


# --------------------------------------------------------------------------- runpacks (audit export)
class RunpackError(PermanentError):
    """A runpack cannot be exported as asked (incomplete source, oversized artifact, bad option)."""

    code = "RUNPACK_ERROR"


class RunpackTargetError(RunpackError):
    """An export target is unsafe: a symlink, a non-directory, an absolute or ``..`` path."""

    code = "RUNPACK_UNSAFE_TARGET"


class RunpackConflictError(RunpackError):
    """The export location already holds a different artifact (runpacks are write-once)."""

    code = "RUNPACK_CONFLICT"


class ObjectLockUnsupportedError(S3Error, PermanentError):
    """WORM retention was asked for, but the bucket has no S3 Object Lock configuration."""

    code = "OBJECT_LOCK_UNSUPPORTED"


class LedgerRaceError(S3Error, RetryableError):
    """Another writer advanced the run's ledger with a different decision at the same seq.

    This holder's view is stale (it was fenced, or raced a re-drive): it must not overwrite
    anything. Handling the message again re-reads the index and the ledger and sees what the
    other writer decided — so it is retried, never dead-lettered.
    """

    code = "LEDGER_RACE"


# --------------------------------------------------------------------------- engine results
class UnknownAttemptError(InputError):
    """An engine result names an attempt the run's ledger never requested (contract §8)."""

    code = "UNKNOWN_ATTEMPT"


class EngineResultConflictError(InputError):
    """An engine result contradicts the result already recorded for the same attempt (the
    first recorded result stands; the contradicting one is dead-lettered for a human)."""

    code = "ENGINE_RESULT_CONFLICT"


class RunBusyError(RetryableError):
    """The run's lease stayed held by another worker: a message that must not be dropped (an
    engine result) is handled again after a backoff."""

    code = "RUN_BUSY"


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret of 3 characters or more replaced by ``***`` (for error
    messages that might quote a DSN, a password or a token back)."""
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, "***")
    return text
