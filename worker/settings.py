"""SR's configuration: one frozen settings object, read once in ``main()``.

Sources, highest priority first: explicit overrides (``load_settings(..., name=value)``),
environment variables (``SR_*``, ``SR_*_FILE`` secret files, plus the standard ``AWS_*``
credentials), a TOML file (``sr --config FILE`` / ``SR_CONFIG``), built-in defaults. The file
is strict (an unknown key is an error); :mod:`worker.settings_sources` holds those rules.
Nothing here runs at import time. Durations are seconds (floats); they become milliseconds
only at librdkafka.

``SR_KAFKA_<NAME>`` variables other than SR's own settings pass straight through to
librdkafka as ``<name>`` lower-cased with ``_`` → ``.`` (``SR_KAFKA_SASL_PASSWORD`` →
``sasl.password``), which is how SASL/TLS is configured, except the properties SR owns
(:data:`~worker.settings_sources.KAFKA_OWNED_PROPERTIES`), which are refused. All pass-through
values are treated as secrets (never logged).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError
from pydantic_settings.sources.utils import parse_env_vars

from worker.errors import ConfigError
from worker.settings_sources import (
    check_kafka_property,
    expand_secret_files,
    read_config_file,
    unknown_variables,
)
from worker.settings_sources import kafka_passthrough as _kafka_passthrough

MiB = 1024 * 1024
#: The config file's values while :func:`load_settings` builds a Settings (read by its source).
_FILE_VALUES: ContextVar[dict[str, Any]] = ContextVar("sr_settings_file_values", default={})  # noqa: B039


class Topics(BaseModel):
    """Topic names (contract §2 defaults)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    intents: str = "sr.run-intents"
    triggers: str = "sr.triggers"
    ready: str = "sr.ready"
    status: str = "sr.run-status"
    dlq: str = "sr.dlq"
    engine_requests: str = "sr.engine-requests"  # out: SR → data engine (contract §8)
    engine_results: str = "sr.engine-results"  # in: data engine → SR


class Settings(BaseSettings):
    """Every knob of the worker and the CLI. Frozen: build it once, pass it down."""

    # extra="forbid": an unknown keyword is a bug (the file's keys are checked before, with hints);
    # environment variables only ever fill known fields.
    model_config = SettingsConfigDict(env_prefix="SR_", frozen=True, extra="forbid", env_nested_delimiter="__",
                                      populate_by_name=True)

    # kafka
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_extra: dict[str, SecretStr] = Field(default_factory=dict)
    group_id: str = "sr-worker"
    # librdkafka client.id of every SR client (broker logs, quotas, ACL audit); None = sr-<hostname>
    client_id: str | None = Field(default=None, min_length=1, max_length=200)
    # static group membership (KIP-345): a stable id per replica (e.g. the pod name of a
    # StatefulSet) lets a restart within the session timeout skip the rebalance; None = dynamic
    group_instance_id: str | None = Field(default=None, min_length=1, max_length=200)
    topics: Topics = Field(default_factory=Topics)
    session_timeout: float = 10.0
    schema_registry_url: str | None = None  # set = Confluent wire format; comma-separated for several
    schema_registry_basic_auth_user_info: SecretStr | None = None  # "<user>:<password>"
    schema_registry_bearer_token: SecretStr | None = None  # static token: Authorization: Bearer <token>
    schema_registry_bearer_logical_cluster: str | None = None  # Confluent Cloud lsrc-... sent with the token
    schema_registry_ca_location: Path | None = None  # PEM CA file or directory verifying the registry
    schema_registry_certificate_location: Path | None = None  # mTLS client certificate (PEM)
    schema_registry_key_location: Path | None = None  # mTLS client key (PEM), unless inside the certificate
    schema_registry_key_password: SecretStr | None = None  # passphrase of an encrypted client key
    schema_registry_timeout: float = Field(default=10.0, gt=0)  # seconds per registry HTTP request
    # True (dev stack): register SR's schemas when missing; False: only look them up, and a
    # schema not registered under its subject is a ConfigError naming the subject
    schema_registry_auto_register: bool = True
    max_message_bytes: int = 1 * MiB

    @model_validator(mode="after")
    def _schema_registry_settings_need_a_url(self) -> Settings:
        # Credentials or TLS files without a registry mean one was meant: refuse rather than
        # silently write single-object frames. Names only, never values.
        given = [name for name in ("basic_auth_user_info", "bearer_token", "bearer_logical_cluster", "ca_location",
                                   "certificate_location", "key_location", "key_password")
                 if getattr(self, f"schema_registry_{name}") is not None]
        if given and not self.schema_registry_url:
            names = ", ".join(f"SR_SCHEMA_REGISTRY_{name.upper()}" for name in given)
            raise ValueError(f"{names} set but SR_SCHEMA_REGISTRY_URL is not")
        return self

    # postgres
    # None = libpq's defaults: PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSERVICE, ~/.pgpass
    pg_dsn: SecretStr | None = None
    pg_pool_size: int = 8
    # `sr run` applies pending migrations at start (dev, compose); false where a separate step
    # runs `sr db migrate` (the Kubernetes Job), so replicas never race it. `--no-migrate` also turns it off.
    migrate: bool = True

    # s3
    s3_endpoint: str | None = None
    s3_bucket: str = "scenario-runner"
    s3_prefix: str = "sr"
    # None = the AWS profile's region (AWS_PROFILE, AWS_CONFIG_FILE), else us-east-1; the first
    # variable set wins
    s3_region: str | None = Field(default=None, min_length=1, validation_alias=AliasChoices(
        "SR_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"))
    # static keys, both or neither (neither = the SDK's default chain: profiles, SSO, web
    # identity, container and instance roles); the session token is sent with them when set
    aws_access_key_id: SecretStr | None = Field(default=None, validation_alias=AliasChoices("AWS_ACCESS_KEY_ID"))
    aws_secret_access_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("AWS_SECRET_ACCESS_KEY")
    )
    aws_session_token: SecretStr | None = Field(default=None, validation_alias=AliasChoices("AWS_SESSION_TOKEN"))
    s3_max_pool_connections: int = 32
    s3_client_library: Literal["obstore", "boto3"] = "obstore"
    s3_sse: Literal["AES256", "aws:kms"] | None = None  # server-side encryption asked for on every PUT
    s3_sse_kms_key_id: str | None = Field(default=None, min_length=1)  # KMS key of aws:kms; unset = default key

    @model_validator(mode="after")
    def _s3_kms_key_needs_kms(self) -> Settings:
        # A KMS key without SR_S3_SSE=aws:kms means SSE-KMS was meant and would not happen.
        # The message names the settings only: the key id is not repeated.
        if self.s3_sse_kms_key_id is not None and self.s3_sse != "aws:kms":
            raise ValueError("SR_S3_SSE_KMS_KEY_ID is set but SR_S3_SSE is not aws:kms")
        return self

    @model_validator(mode="after")
    def _aws_keys_together(self) -> Settings:
        # Half a key pair, or a token without keys, would sign with other credentials than the
        # ones configured. Names only, never values.
        if (self.aws_access_key_id is None) != (self.aws_secret_access_key is None):
            raise ValueError("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together")
        if self.aws_session_token is not None and self.aws_access_key_id is None:
            raise ValueError("AWS_SESSION_TOKEN is set without AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        return self

    # policy and evidence
    policy_file: Path | None = None
    tenant_evidence_prefixes: dict[str, list[str]] | None = None
    max_meta_bytes: int = 16 * MiB
    max_member_bytes: int = 1024 * MiB
    verify_concurrency: int = 8

    # worker loop
    batch_size: int = Field(default=64, ge=1)  # records in flight (polled, not finished) at most
    run_concurrency: int = Field(default=8, ge=1)
    poll_timeout: float = Field(default=0.5, gt=0)  # seconds a poll waits when nothing is in flight
    commit_interval: float = Field(default=0.5, gt=0)  # seconds between offset commits (and on revoke/stop)
    revoke_drain_timeout: float = Field(default=10.0, ge=0)  # seconds a revoke waits for running records
    consumer_close_timeout: float = Field(default=10.0, gt=0)  # seconds a stop waits to leave the group
    lease_wait: float = 0.0
    recheck_interval: float = 30.0
    sweep_interval: float = 5.0
    stale_admitted_after: float = 120.0

    # engine orchestration (contract §8); seconds, like every duration here
    engine_attempt_timeout: float = Field(default=900.0, ge=1.0, le=7 * 86_400.0)  # no result by then: next attempt
    engine_retry_backoff: float = Field(default=30.0, ge=0.0, le=86_400.0)  # before attempt 2; doubles, capped
    engine_max_attempts: int = Field(default=3, ge=1, le=100)  # attempts per run, the first included
    http_host: str = "127.0.0.1"
    http_port: int = 0
    # /healthz answers 503 once the poll loop has not turned for this long (seconds), so a
    # wedged worker is restarted; it must outlast the longest legitimate stall (a revoke drain)
    liveness_timeout: float = Field(default=60.0, gt=0)

    # logging
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["json", "text"] = "json"  # text: one human line per record (a terminal)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _liveness_outlasts_stalls(self) -> Settings:
        # A revoke drain blocks the poll loop by design; liveness must not kill a worker for it.
        floor = self.revoke_drain_timeout + 2 * self.poll_timeout
        if self.liveness_timeout <= floor:
            raise ValueError(f"SR_LIVENESS_TIMEOUT must exceed SR_REVOKE_DRAIN_TIMEOUT + 2 x SR_POLL_TIMEOUT "
                             f"({floor:g} s)")
        return self

    # operators allowed to replay / re-emit / rebuild, and to RETRY over the triggers topic
    # when no operator keys are set (fail closed: empty means nobody)
    operators: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # signed input (contract §10): key sets as JSON or "@path"; unset = not required
    signing_keys: str | None = None  # tenant -> keys; every intent must be signed by its tenant
    operator_keys: str | None = None  # operator -> keys; every trigger must be signed
    engine_keys: str | None = None  # engine name -> keys; every engine result must be signed

    # test-only fault injection (the reliability kill matrix); never set in production
    test_crash_point: str | None = None
    test_crash_after: int = 1

    @field_validator("operators", mode="before")
    @classmethod
    def _operator_list(cls, value: object) -> object:
        # Accept a JSON list or a plain comma-separated list (SR_OPERATORS=alice,bob).
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [name.strip() for name in text.split(",") if name.strip()]
        return value

    @field_validator("tenant_evidence_prefixes", mode="before")
    @classmethod
    def _json_prefixes(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"SR_TENANT_EVIDENCE_PREFIXES is not JSON: {exc}") from exc
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Explicit overrides beat the environment, which beats the config file, which beats
        # the defaults. Inside load_settings the environment is the one it was given, with
        # SR_*_FILE secret files expanded.
        environ = _ENVIRON.get()
        env = env_settings if environ is None else _MappingEnvSource(settings_cls, environ)
        return init_settings, _ByFieldName(settings_cls, env), _ConfigFileSource(settings_cls)

    def pg_conninfo(self) -> SecretStr:
        """The libpq connection string: ``pg_dsn``, or empty (libpq's ``PG*`` defaults) when unset."""
        return self.pg_dsn if self.pg_dsn is not None else SecretStr("")

    def kafka_client_config(self) -> dict[str, str]:
        """librdkafka pass-through settings with their secret values revealed (for the client only)."""
        return {key: value.get_secret_value() for key, value in self.kafka_extra.items()}


#: The environment :func:`load_settings` was given (secret files expanded), while it builds.
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("sr_settings_environ", default=None)


class _MappingEnvSource(EnvSettingsSource):
    """The environment source, reading a given mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


class _ByFieldName(PydanticBaseSettingsSource):
    """Another source's values keyed by field name, not by the alias that matched.

    The environment source answers ``{"AWS_ACCESS_KEY_ID": ...}`` for a field with an alias,
    while the file and explicit values use ``aws_access_key_id``: merged as they are, both
    keys would reach the model and one of them be refused as extra.
    """

    def __init__(self, settings_cls: type[BaseSettings], source: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self._source = source
        self._field_of = {alias.lower(): name for name, info in settings_cls.model_fields.items()
                          for alias in aliases_of(info)}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return {self._field_of.get(key.lower(), key): value for key, value in self._source().items()}


class _ConfigFileSource(PydanticBaseSettingsSource):
    """The TOML file's values (already checked by :func:`~worker.settings_sources.read_config_file`)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_FILE_VALUES.get())


def aliases_of(info: FieldInfo) -> list[str]:
    """The environment names a field's ``validation_alias`` gives it (``AWS_REGION``, ...), upper case."""
    alias = info.validation_alias
    choices = alias.choices if isinstance(alias, AliasChoices) else [alias] if isinstance(alias, str) else []
    return [choice.upper() for choice in choices if isinstance(choice, str)]


@functools.cache
def setting_variables() -> tuple[str, ...]:
    """Every environment variable that sets a setting (``SR_PG_DSN``, ``AWS_ACCESS_KEY_ID``, ...)."""
    return tuple(variable for name, info in Settings.model_fields.items()
                 for variable in (f"SR_{name.upper()}", *aliases_of(info)))


def kafka_passthrough(environ: Mapping[str, str]) -> dict[str, str]:
    """``SR_KAFKA_*`` variables (except SR's own settings) as librdkafka property names.

    Raises:
        ConfigError: a variable overrides a property SR owns (``SR_KAFKA_ENABLE_IDEMPOTENCE``).
    """
    return _kafka_passthrough(environ, own_variables=setting_variables())


def unknown_setting_variables(environ: Mapping[str, str]) -> list[str]:
    """``SR_*`` variables in ``environ`` that configure nothing (typos), with hints; for a warning."""
    return unknown_variables(environ, setting_variables())


@contextmanager
def _building(file_values: dict[str, Any], environ: Mapping[str, str]) -> Iterator[None]:
    file_token = _FILE_VALUES.set(file_values)
    env_token = _ENVIRON.set(environ)
    try:
        yield
    finally:
        _ENVIRON.reset(env_token)
        _FILE_VALUES.reset(file_token)


def load_settings(config_file: Path | None, environ: Mapping[str, str], **overrides: Any) -> Settings:
    """Build the settings: explicit ``overrides`` > ``environ`` > the TOML file > defaults.

    ``SR_<NAME>_FILE`` variables in ``environ`` are read as the value of ``SR_<NAME>`` (secret
    files). ``kafka_extra`` merges the same way: the file's table, then ``SR_KAFKA_*``
    variables, then an explicit ``kafka_extra``.

    Raises:
        ConfigError: the file is unreadable, invalid or has an unknown key; a secret file is
            unreadable; an ``SR_KAFKA_*`` variable overrides a property SR owns; a value fails
            validation. The message names settings, never values.
    """
    from pydantic import ValidationError

    env = expand_secret_files(environ, settings=setting_variables())
    file_values: dict[str, Any] = {}
    if config_file is not None:
        file_values = read_config_file(config_file, Settings.model_fields)
    extra = {str(k): v for k, v in dict(file_values.pop("kafka_extra", {}) or {}).items()}
    for prop in extra:
        check_kafka_property(prop, source=f"config file kafka_extra.{prop!s}")
    extra.update(kafka_passthrough(env))
    for prop in overrides.get("kafka_extra", {}) or {}:
        check_kafka_property(str(prop), source=f"kafka_extra.{prop!s}")
    extra.update(overrides.pop("kafka_extra", {}) or {})
    try:
        with _building(file_values, env):
            return Settings(**overrides, kafka_extra=extra)
    except SettingsError as exc:
        # pydantic-settings names the field; the value (maybe a secret) is not repeated.
        raise ConfigError(f"invalid configuration: {exc}") from None
    except ValidationError as exc:
        # Never echo input values: they may be secrets.
        fields = ", ".join(_describe(err["loc"], err["msg"]) for err in exc.errors())
        raise ConfigError(f"invalid configuration: {fields}") from None


def _describe(loc: tuple[int | str, ...], msg: str) -> str:
    # A model-level check has no location: its message names the settings itself.
    msg = msg.removeprefix("Value error, ")
    return f"{'.'.join(str(p) for p in loc)} ({msg})" if loc else msg
