"""SR's configuration: one frozen settings object, read once in ``main()``.

Sources, lowest to highest priority: built-in defaults, a TOML file (``sr --config FILE``),
environment variables (``SR_*``, plus the standard ``AWS_*`` credentials). Nothing here runs
at import time. Durations are seconds (floats); they become milliseconds only at librdkafka.

``SR_KAFKA_<NAME>`` variables other than ``SR_KAFKA_BOOTSTRAP`` pass straight through to
librdkafka as ``<name>`` lower-cased with ``_`` → ``.`` (``SR_KAFKA_SASL_PASSWORD`` →
``sasl.password``), which is how SASL/TLS is configured. All pass-through values are treated
as secrets (never logged).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from worker.errors import ConfigError

_KAFKA_PASSTHROUGH_PREFIX = "SR_KAFKA_"
_KAFKA_OWN_KEYS = frozenset({"SR_KAFKA_BOOTSTRAP"})
MiB = 1024 * 1024


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

    model_config = SettingsConfigDict(env_prefix="SR_", frozen=True, extra="ignore", env_nested_delimiter="__")

    # kafka
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_extra: dict[str, SecretStr] = Field(default_factory=dict)
    group_id: str = "sr-worker"
    topics: Topics = Field(default_factory=Topics)
    session_timeout: float = 10.0
    schema_registry_url: str | None = None
    max_message_bytes: int = 1 * MiB

    # postgres
    pg_dsn: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/postgres")
    pg_pool_size: int = 8

    # s3
    s3_endpoint: str | None = None
    s3_bucket: str = "scenario-runner"
    s3_prefix: str = "sr"
    s3_region: str = Field(default="us-east-1", validation_alias=AliasChoices("SR_S3_REGION", "AWS_DEFAULT_REGION"))
    aws_access_key_id: SecretStr | None = Field(default=None, validation_alias=AliasChoices("AWS_ACCESS_KEY_ID"))
    aws_secret_access_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("AWS_SECRET_ACCESS_KEY")
    )
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
        # Environment beats the config file (passed as init kwargs), which beats defaults.
        return env_settings, init_settings

    def kafka_client_config(self) -> dict[str, str]:
        """librdkafka pass-through settings with their secret values revealed (for the client only)."""
        return {key: value.get_secret_value() for key, value in self.kafka_extra.items()}


def kafka_passthrough(environ: Mapping[str, str]) -> dict[str, str]:
    """Collect ``SR_KAFKA_*`` variables (except SR's own) as librdkafka property names."""
    extra: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith(_KAFKA_PASSTHROUGH_PREFIX) and key not in _KAFKA_OWN_KEYS:
            prop = key[len(_KAFKA_PASSTHROUGH_PREFIX):].lower().replace("_", ".")
            if prop:
                extra[prop] = value
    return extra


def load_settings(config_file: Path | None, environ: Mapping[str, str], **overrides: Any) -> Settings:
    """Build the settings from a TOML file, the environment and explicit overrides.

    Raises:
        ConfigError: the file is unreadable/invalid or a value fails validation.
    """
    from pydantic import ValidationError

    base: dict[str, Any] = {}
    if config_file is not None:
        try:
            base = tomllib.loads(config_file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from exc
    extra = dict(base.pop("kafka_extra", {}) or {})
    extra.update(kafka_passthrough(environ))
    base["kafka_extra"] = extra
    base.update(overrides)
    try:
        return Settings(**base)
    except SettingsError as exc:
        # pydantic-settings names the field; the value (maybe a secret) is not repeated.
        raise ConfigError(f"invalid configuration: {exc}") from None
    except ValidationError as exc:
        # Never echo input values: they may be secrets.
        fields = ", ".join(".".join(str(p) for p in err["loc"]) + f" ({err['msg']})" for err in exc.errors())
        raise ConfigError(f"invalid configuration: {fields}") from exc
