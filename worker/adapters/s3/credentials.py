"""Where S3 credentials and the signing region come from: :class:`CredentialChain`.

One chain per :class:`~worker.adapters.s3.ObjectStore`, shared by both transports, so boto3
and obstore always sign with the same credentials for the same region:

* **static keys** (``S3Config.access_key_id`` / ``secret_access_key``) when configured, always
  with ``S3Config.session_token`` when one is configured;
* otherwise **botocore's default chain**, resolved once in :meth:`CredentialChain.resolve`:
  the environment (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``),
  web identity / IRSA (``AWS_WEB_IDENTITY_TOKEN_FILE`` + ``AWS_ROLE_ARN``), SSO, the shared
  credentials and config files with ``AWS_PROFILE`` (assume-role profiles and
  ``credential_process`` included), container roles (ECS, EKS Pod Identity) and the instance
  role. Temporary credentials are refreshed by botocore before they expire.

boto3's client signs with the chain's botocore ``Credentials`` object; obstore asks
:class:`ObstoreCredentials` (its ``credential_provider``), which reads the same object and
reports the real expiry, so obstore's cache never outlives what botocore holds. obstore does
not resolve credentials itself on purpose: object_store knows neither profiles, SSO nor
``credential_process``, and it would read ``AWS_SESSION_TOKEN`` from the environment even next
to static keys from a config file — two resolutions could pick different credentials for the
two halves of one store.

Region: ``S3Config.region``, else ``AWS_REGION``, else botocore's (``AWS_DEFAULT_REGION``, then
the profile's ``region``), else ``us-east-1`` — never a default that beats the profile.

Faults are one line each and never carry a secret: :class:`~worker.errors.S3CredentialsError`
(permanent) when there are no credentials, a profile or SSO session is missing or expired, or
a credential source refused; :class:`~worker.errors.S3UnavailableError` (retried) when a
credential endpoint (container, STS, SSO) could not answer a fetch or refresh.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, ClassVar, Final

from worker.adapters.s3.config import S3Config
from worker.errors import S3AccessError, S3CredentialsError, S3Error, S3UnavailableError, redact

if TYPE_CHECKING:
    import boto3.session
    import botocore.credentials
    import botocore.session
    from obstore.store import S3Credential

__all__ = [
    "DEFAULT_REGION",
    "NO_CREDENTIALS_HINT",
    "REFRESH_THRESHOLD",
    "CredentialChain",
    "ObstoreCredentials",
    "credential_error",
]

#: The region of last resort, used only when nothing (setting, environment, profile) names one.
DEFAULT_REGION: Final = "us-east-1"

#: obstore asks for new credentials once the ones it holds expire within this (object_store's
#: own default). botocore refreshes 15 minutes before expiry (10 at the latest), so the answer
#: is then a fresh set.
REFRESH_THRESHOLD: Final = timedelta(minutes=5)

#: What a person can do when the default chain finds nothing.
NO_CREDENTIALS_HINT: Final = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (with AWS_SESSION_TOKEN for temporary keys), "
    "or AWS_PROFILE, or AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN, or run with a container or instance role"
)

# Calls botocore makes to fetch credentials; their refusals are about credentials, not S3.
_CREDENTIAL_OPERATIONS: Final = frozenset({
    "AssumeRole", "AssumeRoleWithWebIdentity", "AssumeRoleWithSAML", "GetRoleCredentials",
    "CreateToken", "GetSessionToken",
})


def _one_line(text: str, secrets: list[str]) -> str:
    return redact(" ".join(text.split()), secrets)


def credential_error(exc: BaseException, what: str, *, secrets: list[str] | None = None) -> S3Error | None:
    """The SR error of a botocore credential fault, or ``None`` if ``exc`` is not one.

    Args:
        exc: what botocore raised while resolving, fetching or refreshing credentials.
        what: the request or step, for the message (``"PUT s3://bucket/key"``).
        secrets: values to scrub from the message (botocore's texts carry none, this is a
            second guard).

    Returns:
        S3UnavailableError for a credential endpoint that could not answer (retryable);
        S3CredentialsError for anything else about credentials; ``None`` otherwise. The
        message is one line.
    """
    if isinstance(exc, S3Error):
        return exc
    fault = _missing_credentials(exc) or _failed_fetch(exc)
    if fault is None:
        return None
    kind, text = fault
    return kind(_one_line(f"{what}: {text}", secrets or []))


def _missing_credentials(exc: BaseException) -> tuple[type[S3Error], str] | None:
    # Nothing usable is configured: a person has to act, retrying cannot help.
    from botocore import exceptions as be

    if isinstance(exc, be.NoCredentialsError):
        return S3CredentialsError, f"no S3 credentials found: {NO_CREDENTIALS_HINT}"
    if isinstance(exc, be.ProfileNotFound):
        return S3CredentialsError, (f"AWS profile {exc.kwargs.get('profile', '')!r} (AWS_PROFILE) is not in the AWS "
                                    "config or credentials file (AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE)")
    if isinstance(exc, (be.SSOError, be.LoginError)):
        return S3CredentialsError, (f"the AWS SSO / login session is missing or expired ({type(exc).__name__}); "
                                    "sign in again (aws sso login)")
    if isinstance(exc, be.RefreshWithMFAUnsupportedError):
        return S3CredentialsError, ("the AWS profile needs an MFA code to refresh its credentials, which a service "
                                    "cannot enter; use a role without MFA")
    if isinstance(exc, (be.PartialCredentialsError, be.InvalidConfigError, be.ConfigParseError)):
        return S3CredentialsError, f"unusable S3 credentials: {exc}"
    return None


def _failed_fetch(exc: BaseException) -> tuple[type[S3Error], str] | None:
    # A credential source was asked and did not deliver.
    from botocore import exceptions as be

    if isinstance(exc, be.CredentialRetrievalError):
        # A container endpoint, STS or a credential process that did not answer: often
        # transient, so retried (bounded); the message names the source.
        return S3UnavailableError, f"cannot fetch S3 credentials: {exc}"
    if isinstance(exc, be.TokenRetrievalError):
        return S3CredentialsError, f"cannot refresh the SSO token: {exc}"
    if isinstance(exc, be.ClientError) and getattr(exc, "operation_name", "") in _CREDENTIAL_OPERATIONS:
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        code = str(exc.response.get("Error", {}).get("Code", "") or "")
        kind: type[S3Error] = S3UnavailableError if status >= 500 or code == "Throttling" else S3CredentialsError
        return kind, f"fetching S3 credentials failed: {exc.operation_name} answered {code or 'HTTP'} {status}"
    if isinstance(exc, RuntimeError) and "credentials are still expired" in str(exc):
        return S3CredentialsError, "the S3 credentials were refreshed but are still expired"
    return None


def _expiry(credentials: botocore.credentials.Credentials) -> datetime | None:
    # botocore has no public accessor for the expiry of refreshable credentials; the
    # attribute is read defensively (and only ever shortens what obstore caches).
    value = getattr(credentials, "_expiry_time", None)
    return value if isinstance(value, datetime) else None


@dataclass(frozen=True, slots=True)
class _Resolved:
    session: botocore.session.Session
    credentials: botocore.credentials.Credentials
    region: str
    source: str


class CredentialChain:
    """The S3 credentials and signing region of one object store, resolved once.

    No I/O in ``__init__``; :meth:`resolve` reads the environment and AWS files and fetches
    credentials (a container, STS or SSO request for those sources) once, so a store with no
    usable credentials fails when it opens, not at its first request.

    Args:
        config: the adapter's settings (region and static keys).
    """

    def __init__(self, config: S3Config) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._resolved: _Resolved | None = None
        self._failure: S3Error | None = None

    def resolve(self) -> None:
        """Resolve the region and credentials (idempotent, thread-safe).

        Raises:
            S3CredentialsError: no credentials anywhere in the chain, a missing profile, an
                expired SSO session or a refused credential source (not retryable).
            S3UnavailableError: a credential endpoint could not answer.
        """
        with self._lock:
            if self._resolved is None:
                self._resolved = self._resolve()

    def _resolve(self) -> _Resolved:
        import botocore.session

        config = self._config
        what = "resolving S3 credentials"
        try:
            # A fresh session per chain: it reads AWS_PROFILE, AWS_CONFIG_FILE and the other
            # AWS_* variables now, not whatever another session cached earlier.
            session = botocore.session.Session()
            region = (config.region or os.environ.get("AWS_REGION")
                      or session.get_config_variable("region") or DEFAULT_REGION)
            session.set_config_variable("region", region)
            if config.access_key_id is not None and config.secret_access_key is not None:
                session.set_credentials(config.access_key_id.get_secret_value(),
                                        config.secret_access_key.get_secret_value(),
                                        config.session_token.get_secret_value() if config.session_token else None)
            credentials = session.get_credentials()
            # Deferred sources (web identity, SSO, assume-role) fetch on first use: fetch now.
            frozen = credentials.get_frozen_credentials() if credentials is not None else None
        except Exception as exc:
            error = credential_error(exc, what, secrets=self.secrets())
            if error is None:
                error = S3CredentialsError(_one_line(f"{what}: {type(exc).__name__}: {exc}", self.secrets()))
            raise error from exc
        if credentials is None or frozen is None or not frozen.access_key or not frozen.secret_key:
            raise S3CredentialsError(f"{what}: no S3 credentials found: {NO_CREDENTIALS_HINT}")
        source = "static keys" if config.has_static_keys() else str(getattr(credentials, "method", None) or "chain")
        return _Resolved(session=session, credentials=credentials, region=str(region), source=source)

    def _get(self) -> _Resolved:
        resolved = self._resolved
        if resolved is None:
            raise S3AccessError("S3 credentials used before CredentialChain.resolve()")
        return resolved

    @property
    def region(self) -> str:
        """The signing region (see the module docstring for the order).

        Raises:
            S3AccessError: :meth:`resolve` was not called (a caller bug).
        """
        return self._get().region

    @property
    def source(self) -> str:
        """Where the credentials came from: ``"static keys"`` or botocore's provider name
        (``"env"``, ``"shared-credentials-file"``, ``"sso"``, ``"assume-role-with-web-identity"``,
        ``"container-role"``, ``"iam-role"``, ...). Never a secret.

        Raises:
            S3AccessError: :meth:`resolve` was not called (a caller bug).
        """
        return self._get().source

    def boto3_session(self) -> boto3.session.Session:
        """A boto3 session over the chain's botocore session: clients made from it sign with
        the chain's credentials and default to its region (no request is sent).

        Raises:
            S3AccessError: :meth:`resolve` was not called (a caller bug).
        """
        import boto3.session

        resolved = self._get()
        return boto3.session.Session(botocore_session=resolved.session, region_name=resolved.region)

    def obstore_credentials(self) -> ObstoreCredentials:
        """obstore's ``credential_provider`` reading this chain's credentials.

        Raises:
            S3AccessError: :meth:`resolve` was not called (a caller bug).
        """
        return ObstoreCredentials(self, self._get().credentials)

    def secrets(self) -> list[str]:
        """The configured secret values (secret key, session token), to scrub from messages.

        Credentials found by the chain are not listed: reading them could start a refresh.
        """
        return [s.get_secret_value() for s in (self._config.secret_access_key, self._config.session_token)
                if s is not None]

    def remember_failure(self, error: S3Error) -> None:
        """Keep the typed error of a failed obstore credential fetch: obstore reports it only as
        its own ``UnauthenticatedError`` with a Python traceback in the text."""
        with self._lock:
            self._failure = error

    def take_failure(self) -> S3Error | None:
        """The last remembered credential failure, once (``None`` if there is none)."""
        with self._lock:
            failure, self._failure = self._failure, None
        return failure


class ObstoreCredentials:
    """obstore's ``credential_provider``: the chain's current credentials, with their expiry.

    obstore calls it (holding the GIL) when the credentials it cached expire within
    :data:`refresh_threshold`; ``get_frozen_credentials`` lets botocore refresh first, so
    obstore gets the same keys boto3 signs with. Static credentials never expire.

    Raises (when called):
        S3CredentialsError / S3UnavailableError: the credentials cannot be fetched or
            refreshed (also remembered on the chain for the transport to raise).
    """

    #: Read by obstore: re-ask this long before the expiry reported.
    refresh_threshold: ClassVar[timedelta] = REFRESH_THRESHOLD

    def __init__(self, chain: CredentialChain, credentials: botocore.credentials.Credentials) -> None:
        self._chain = chain
        self._credentials = credentials

    def __call__(self) -> S3Credential:
        """The credentials to sign with now (``expires_at`` in UTC, ``None`` = never)."""
        import botocore.credentials

        credentials = self._credentials
        try:
            # A refresh (ours or another thread's) may land between reading the keys and the
            # expiry: when the expiry read before and after differs, read both again; if it
            # keeps moving, the earlier expiry is the one that certainly covers the keys.
            for _ in range(3):
                before = _expiry(credentials)
                frozen = credentials.get_frozen_credentials()
                after = _expiry(credentials)
                if before == after:
                    break
        except Exception as exc:
            error = credential_error(exc, "obstore", secrets=self._chain.secrets()) or S3CredentialsError(
                f"obstore: cannot refresh S3 credentials ({type(exc).__name__})")
            self._chain.remember_failure(error)
            raise error from exc
        if not frozen.access_key or not frozen.secret_key:
            error = S3CredentialsError(f"obstore: no S3 credentials found: {NO_CREDENTIALS_HINT}")
            self._chain.remember_failure(error)
            raise error
        known = [when for when in (before, after) if when is not None]
        expires_at: datetime | None = min(known).astimezone(UTC) if known else None
        if expires_at is None and isinstance(credentials, botocore.credentials.RefreshableCredentials):
            # Refreshable but the expiry is unreadable: botocore hands out keys with at least
            # ten minutes left, so two thresholds are safe.
            expires_at = datetime.now(UTC) + 2 * REFRESH_THRESHOLD
        return {"access_key_id": frozen.access_key, "secret_access_key": frozen.secret_key,
                "token": frozen.token, "expires_at": expires_at}

    def __repr__(self) -> str:
        # Never the keys: obstore may print its provider in a debug message.
        return f"ObstoreCredentials(method={getattr(self._credentials, 'method', None)!r})"
