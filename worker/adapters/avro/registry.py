"""The Confluent Schema Registry behind the Avro codec, through confluent-kafka's own client.

The codec asks a registry two things (:class:`SchemaRegistry`): the id of one of SR's schemas
under a subject (to write a Confluent frame) and the schema text of an id (to read one).
:class:`ConfluentSchemaRegistry` answers both with confluent-kafka's ``SchemaRegistryClient``,
which brings basic auth, static bearer tokens, TLS with a private CA, mTLS, retries with
jittered backoff (408, 429, 5xx and connection failures) and id/schema caches. SR's framing
and strict decoding stay in :mod:`.codec`.

Registration policy: with ``auto_register`` (the default, as on the dev stack) the id comes
from ``POST /subjects/<subject>/versions``, which registers the schema if the subject lacks
it. Without it SR only *looks up* (``POST /subjects/<subject>``, the registry's read-only
"is this schema registered?" call): a schema that is not registered is a
:class:`~worker.errors.ConfigError` naming the subject, and nothing is ever registered.

Every client failure leaves as one :mod:`worker.errors` exception with a one-line message
that never contains a credential: 408/429/5xx and network failures are retryable
(:class:`~worker.errors.SchemaRegistryUnavailableError`); refused credentials, other 4xx,
TLS verification failures and malformed answers are permanent
(:class:`~worker.errors.SchemaRegistryRejectedError`); an id the registry does not know is an
:class:`~worker.errors.UnknownSchemaError`.

Constructing the adapter reads the CA / certificate / key files but sends nothing: the first
request goes out on the first encode or decode that needs the registry.
"""

from __future__ import annotations

import ssl
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar, runtime_checkable

import httpx2
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError as ClientError
from pydantic import SecretStr

from worker.errors import (
    ConfigError,
    SchemaRegistryRejectedError,
    SchemaRegistryUnavailableError,
    SRError,
    UnknownSchemaError,
)

__all__ = ["ConfluentSchemaRegistry", "RegistryConfig", "SchemaRegistry", "client_config"]

_T = TypeVar("_T")
#: Statuses the client itself retries (its ``is_retriable``); still failing afterwards = unavailable.
_RETRYABLE_STATUS: Final = frozenset({408, 429})
#: Registry error codes of a 404 that mean "this subject / schema is not registered".
_NOT_REGISTERED_CODES: Final = frozenset({40401, 40403})
_MAX_ID: Final = 2**31 - 1  # registry ids are Java ints; the frame has 4 bytes for them
_MAX_DETAIL: Final = 200  # characters of a registry's own error message kept in ours
_CREDENTIAL_SETTINGS: Final = "SR_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO / SR_SCHEMA_REGISTRY_BEARER_TOKEN"


@runtime_checkable
class SchemaRegistry(Protocol):
    """The two Confluent Schema Registry questions the codec asks."""

    def schema_id_for(self, subject: str, schema_json: str) -> int:
        """The global id of ``schema_json`` under ``subject`` (registering it if allowed).

        Raises:
            ConfigError: the schema is not registered and registering is not allowed.
            SchemaRegistryUnavailableError: the registry could not be reached or answered 5xx.
            SchemaRegistryRejectedError: the registry refused (credentials, incompatible schema).
        """
        ...

    def get_schema(self, schema_id: int) -> str:
        """The schema JSON text of a global schema id.

        Raises:
            UnknownSchemaError: the registry does not know the id (or it is not Avro).
            SchemaRegistryUnavailableError: the registry could not be reached or answered 5xx.
            SchemaRegistryRejectedError: the registry refused (credentials) or answered garbage.
        """
        ...


@dataclass(frozen=True)
class RegistryConfig:
    """How to reach and authenticate to a Confluent-compatible Schema Registry.

    Durations are seconds. Secrets are :class:`~pydantic.SecretStr` and are revealed only to
    the client (:func:`client_config`).
    """

    #: ``http(s)://host[:port][/path]``; several, comma-separated, are tried in turn.
    url: str
    #: ``user:password`` for HTTP basic auth (Confluent Cloud: ``<api key>:<api secret>``).
    basic_auth_user_info: SecretStr | None = None
    #: A static bearer token, sent as ``Authorization: Bearer <token>``.
    bearer_token: SecretStr | None = None
    #: Confluent Cloud logical cluster (``lsrc-...``) sent with a bearer token as ``target-sr-cluster``.
    bearer_logical_cluster: str | None = None
    #: PEM CA bundle (file or ``c_rehash``-ed directory) that verifies the registry's certificate.
    ca_location: Path | None = None
    #: Client certificate (PEM) for mTLS; may also hold the key.
    certificate_location: Path | None = None
    #: Client private key (PEM) for mTLS, if not inside the certificate file.
    key_location: Path | None = None
    #: Passphrase of an encrypted client key.
    key_password: SecretStr | None = None
    #: Seconds each HTTP request may take (connect, read, write each).
    timeout: float = 10.0
    #: Register SR's schemas when missing (True), or only look them up (False).
    auto_register: bool = True
    #: Retries of one request after a retryable failure (0 = no retry).
    max_retries: int = 3
    #: Seconds the first retry waits at most (full jitter; doubles per retry).
    retry_wait: float = 1.0
    #: Seconds any one retry waits at most.
    retry_max_wait: float = 20.0


def _check_urls(url: str) -> list[str]:
    urls = [part.strip() for part in url.split(",")]
    for one in urls:
        parsed = urllib.parse.urlsplit(one)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError("SR_SCHEMA_REGISTRY_URL must be http(s)://host[:port][/path], "
                              "comma-separated for several")
        if parsed.username is not None or parsed.password is not None:
            # The URL is not a secret setting (it is logged and shown); credentials have their own.
            raise ConfigError("SR_SCHEMA_REGISTRY_URL must not carry credentials: "
                              "use SR_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO")
    return urls


def _check(config: RegistryConfig) -> None:
    """Refuse contradictory or impossible settings before the client sees them."""
    _check_urls(config.url)
    if config.basic_auth_user_info is not None and config.bearer_token is not None:
        raise ConfigError("SR_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO and SR_SCHEMA_REGISTRY_BEARER_TOKEN "
                          "are both set: choose one")
    if config.basic_auth_user_info is not None and ":" not in config.basic_auth_user_info.get_secret_value():
        raise ConfigError("SR_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO must be <user>:<password>")
    if config.bearer_token is not None and not config.bearer_token.get_secret_value().strip():
        raise ConfigError("SR_SCHEMA_REGISTRY_BEARER_TOKEN is empty")
    if config.bearer_logical_cluster is not None and config.bearer_token is None:
        raise ConfigError("SR_SCHEMA_REGISTRY_BEARER_LOGICAL_CLUSTER needs SR_SCHEMA_REGISTRY_BEARER_TOKEN")
    if (config.key_location is not None or config.key_password is not None) and config.certificate_location is None:
        raise ConfigError("SR_SCHEMA_REGISTRY_KEY_LOCATION / _KEY_PASSWORD need "
                          "SR_SCHEMA_REGISTRY_CERTIFICATE_LOCATION")
    for setting, path in (("CA_LOCATION", config.ca_location), ("CERTIFICATE_LOCATION", config.certificate_location),
                          ("KEY_LOCATION", config.key_location)):
        # Checked here because the ssl module's errors do not name the file.
        if path is not None and not (path.is_file() or (setting == "CA_LOCATION" and path.is_dir())):
            raise ConfigError(f"SR_SCHEMA_REGISTRY_{setting}: {path} is not an existing file")
    if not config.timeout > 0:
        raise ConfigError("SR_SCHEMA_REGISTRY_TIMEOUT must be > 0 seconds")
    if config.max_retries < 0 or config.retry_wait < 0 or config.retry_max_wait < 0:
        raise ConfigError("schema registry retries and retry waits must be >= 0")


def client_config(config: RegistryConfig) -> dict[str, Any]:
    """The ``SchemaRegistryClient`` configuration of ``config``, secrets revealed (for the client only).

    Raises:
        ConfigError: contradictory or malformed settings (the message names settings, never values).
    """
    _check(config)
    conf: dict[str, Any] = {
        "url": ",".join(_check_urls(config.url)),
        "timeout": config.timeout,
        "max.retries": config.max_retries,
        "retries.wait.ms": round(config.retry_wait * 1000),
        "retries.max.wait.ms": round(config.retry_max_wait * 1000),
    }
    if config.basic_auth_user_info is not None:
        conf["basic.auth.user.info"] = config.basic_auth_user_info.get_secret_value()
    if config.bearer_token is not None:
        conf["bearer.auth.credentials.source"] = "STATIC_TOKEN"
        conf["bearer.auth.token"] = config.bearer_token.get_secret_value()
        # The client requires a logical cluster with any bearer token; only Confluent Cloud reads it.
        conf["bearer.auth.logical.cluster"] = config.bearer_logical_cluster or ""
    if config.ca_location is not None:
        conf["ssl.ca.location"] = str(config.ca_location)
    if config.certificate_location is not None:
        conf["ssl.certificate.location"] = str(config.certificate_location)
    if config.key_location is not None:
        conf["ssl.key.location"] = str(config.key_location)
    if config.key_password is not None:
        conf["ssl.key.password"] = config.key_password.get_secret_value()
    return conf


def _tls_verification_failed(exc: BaseException) -> bool:
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        if isinstance(node, ssl.SSLCertVerificationError):
            return True
        seen.add(id(node))
        node = node.__cause__ or node.__context__
    return False


def _detail(message: object) -> str:
    text = " ".join(str(message or "").split())
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"


def _translate_http(exc: ClientError, action: str) -> SRError:
    status = exc.http_status_code
    code = exc.error_code
    if status in (401, 403):
        # The registry's own text is left out: it is about our request, which holds the credentials.
        return SchemaRegistryRejectedError(f"schema registry refused the credentials (HTTP {status}) to {action}; "
                                           f"check {_CREDENTIAL_SETTINGS}")
    if status >= 500 or status in _RETRYABLE_STATUS:
        return SchemaRegistryUnavailableError(f"schema registry could not {action}: HTTP {status}")
    return SchemaRegistryRejectedError(f"schema registry refused to {action}: HTTP {status}, registry code {code}: "
                                       f"{_detail(exc.error_message)}")


class ConfluentSchemaRegistry:
    """:class:`SchemaRegistry` on confluent-kafka's ``SchemaRegistryClient``.

    Thread-safe (the client's caches are locked, its HTTP session is shared). Credentials
    never appear in ``repr`` or in an error message.
    """

    def __init__(self, config: RegistryConfig) -> None:
        """Build the client (reads the TLS files, sends nothing).

        Raises:
            ConfigError: contradictory settings, a URL that is not http(s) or carries
                credentials, or a CA / certificate / key file that cannot be loaded.
        """
        conf = client_config(config)
        try:
            self._client = SchemaRegistryClient(conf)
        except OSError as exc:  # includes ssl.SSLError: not PEM, key not matching, wrong passphrase
            raise ConfigError(f"schema registry TLS files cannot be loaded (SR_SCHEMA_REGISTRY_CA_LOCATION, "
                              f"_CERTIFICATE_LOCATION, _KEY_LOCATION, _KEY_PASSWORD): {type(exc).__name__}: "
                              f"{_detail(exc.strerror or exc)}") from None
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"schema registry client refused its configuration: {type(exc).__name__}") from None
        self._config = config
        self._hosts = tuple(urllib.parse.urlsplit(u).hostname or "" for u in _check_urls(config.url))

    @property
    def auto_register(self) -> bool:
        """Whether :meth:`schema_id_for` registers a missing schema."""
        return self._config.auto_register

    def __repr__(self) -> str:
        auth = "basic" if self._config.basic_auth_user_info else "bearer" if self._config.bearer_token else "none"
        return (f"ConfluentSchemaRegistry(hosts={list(self._hosts)!r}, auth={auth!r}, "
                f"auto_register={self._config.auto_register})")

    def close(self) -> None:
        """Close the HTTP session (idempotent); the registry is unusable afterwards."""
        self._client.close()

    def _call(self, action: str, request: Callable[[], _T]) -> _T:
        try:
            return request()
        except ClientError as exc:
            raise _translate_http(exc, action) from exc
        except httpx2.TransportError as exc:
            if _tls_verification_failed(exc):
                raise SchemaRegistryRejectedError(f"schema registry TLS certificate verification failed to {action}; "
                                                  "check SR_SCHEMA_REGISTRY_CA_LOCATION") from exc
            raise SchemaRegistryUnavailableError(f"schema registry unreachable to {action}: "
                                                 f"{type(exc).__name__}") from exc
        except Exception as exc:  # the client parses answers loosely (ValueError, KeyError, AttributeError, ...)
            raise SchemaRegistryRejectedError(f"schema registry gave an unusable answer to {action}: "
                                              f"{type(exc).__name__}") from exc

    def schema_id_for(self, subject: str, schema_json: str) -> int:
        """The id of ``schema_json`` under ``subject``: registered if ``auto_register``, else looked up.

        Raises:
            ConfigError: auto-register is off and the subject does not hold this schema.
            SchemaRegistryUnavailableError: 408/429/5xx or a network failure, after the client's retries.
            SchemaRegistryRejectedError: credentials refused, another 4xx (e.g. 409: incompatible
                with the subject's compatibility rule), TLS verification failed, or a bad answer.
        """
        schema = Schema(schema_json, "AVRO")
        if self._config.auto_register:
            action = f"register a schema under subject {subject!r}"
            schema_id: object = self._call(action, lambda: self._client.register_schema(subject, schema))
        else:
            action = f"look up a schema under subject {subject!r}"
            try:
                registered = self._call(action, lambda: self._client.lookup_schema(subject, schema))
            except SchemaRegistryRejectedError as exc:
                cause = exc.__cause__
                if isinstance(cause, ClientError) and cause.http_status_code == 404 \
                        and cause.error_code in _NOT_REGISTERED_CODES:
                    raise ConfigError(f"schema not registered under subject {subject!r} and "
                                      "SR_SCHEMA_REGISTRY_AUTO_REGISTER is false: register SR's schema there "
                                      "(schemas/*.avsc) or allow auto-registration") from cause
                raise
            schema_id = registered.schema_id
        if isinstance(schema_id, bool) or not isinstance(schema_id, int) or not 0 <= schema_id <= _MAX_ID:
            raise SchemaRegistryRejectedError(f"schema registry returned no valid id to {action}")
        return schema_id

    def get_schema(self, schema_id: int) -> str:
        """The schema text of ``schema_id`` (``GET /schemas/ids/<id>``, cached by the client).

        Raises:
            UnknownSchemaError: 404 (the registry does not know the id), or the id is not an Avro schema.
            SchemaRegistryUnavailableError: 408/429/5xx or a network failure, after the client's retries.
            SchemaRegistryRejectedError: credentials refused, another 4xx, TLS verification failed,
                or a bad answer.
        """
        number = int(schema_id)
        action = f"fetch schema id {number}"
        try:
            schema = self._call(action, lambda: self._client.get_schema(number))
        except SchemaRegistryRejectedError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and cause.http_status_code == 404:
                raise UnknownSchemaError(f"schema registry does not know schema id {number}") from cause
            raise
        if schema.schema_type not in (None, "AVRO"):
            raise UnknownSchemaError(f"registry schema id {number} is a {schema.schema_type} schema, not Avro")
        if not isinstance(schema.schema_str, str):
            raise SchemaRegistryRejectedError(f"schema registry returned no schema text to {action}")
        return schema.schema_str
