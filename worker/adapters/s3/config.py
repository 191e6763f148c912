"""Connection and retry settings of the S3 adapter (:class:`S3Config`)."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

__all__ = ["ClientLibrary", "S3Config", "ServerSideEncryption"]

#: The client libraries the adapter can send requests with.
ClientLibrary = Literal["obstore", "boto3"]

#: Server-side encryption a PUT can ask for: SSE-S3 (``AES256``) or SSE-KMS (``aws:kms``).
ServerSideEncryption = Literal["AES256", "aws:kms"]


class S3Config(BaseModel):
    """Connection and retry settings of an :class:`~worker.adapters.s3.ObjectStore`.

    Attributes:
        endpoint_url: S3 endpoint (``None`` = AWS default for ``region``).
        region: signing region; ``None`` = ``AWS_REGION``, else botocore's resolution
            (``AWS_DEFAULT_REGION``, the profile's ``region``), else ``us-east-1``
            (:class:`~worker.adapters.s3.credentials.CredentialChain`).
        access_key_id / secret_access_key: static credentials, both or neither; ``None``
            uses the SDK's default credential chain (``AWS_*`` env with the session token,
            ``AWS_PROFILE`` and the shared config/credentials files, SSO, web identity,
            container and instance roles), the same one for both client libraries.
        session_token: the session token of temporary static credentials (assume-role,
            SSO, OIDC); sent with the static keys on every request of both libraries.
            Only valid with both static keys.
        max_pool_connections: HTTP connection pool size (should be ≥ verifier concurrency).
        connect_timeout / read_timeout: seconds, per attempt.
        max_attempts: total attempts per request (1 = no retry), tenacity-driven.
        backoff_initial / backoff_max: seconds; exponential backoff with full jitter
            between attempts, each wait at most ``backoff_max``.
        path_style: force path-style addressing; ``None`` = path style when a custom
            ``endpoint_url`` is set (MinIO, SeaweedFS), virtual-host style on AWS.
        client_library: ``"obstore"`` (default) serves PUT, GET and HEAD with obstore and the
            rest with boto3; ``"boto3"`` serves everything with boto3
            (:func:`~worker.adapters.s3.transport.routes_for` is the table).
        sse: server-side encryption every PUT asks for (``x-amz-server-side-encryption``),
            with both libraries; ``None`` sends no header (the bucket's default applies).
        sse_kms_key_id: the KMS key of ``sse="aws:kms"``
            (``x-amz-server-side-encryption-aws-kms-key-id``); ``None`` = the account's
            default key. Only valid with ``aws:kms``.

    Raises:
        pydantic.ValidationError: a field is out of range, ``sse_kms_key_id`` is set
            without ``sse="aws:kms"``, only one static key is set, or ``session_token``
            without them (the message never repeats a value).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint_url: str | None = None
    region: str | None = Field(default=None, min_length=1)
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    max_pool_connections: int = Field(default=32, ge=1, le=1024)
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=5, ge=1, le=100)
    backoff_initial: float = Field(default=0.1, ge=0)
    backoff_max: float = Field(default=5.0, ge=0)
    path_style: bool | None = None
    client_library: ClientLibrary = "obstore"
    sse: ServerSideEncryption | None = None
    sse_kms_key_id: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _kms_key_needs_kms(self) -> Self:
        # A key id without aws:kms means SSE-KMS was meant and would not happen: refuse the
        # configuration rather than write objects encrypted otherwise than asked.
        if self.sse_kms_key_id is not None and self.sse != "aws:kms":
            raise ValueError("sse_kms_key_id is set but sse is not 'aws:kms'")
        return self

    @model_validator(mode="after")
    def _static_keys_together(self) -> Self:
        # Half a key pair would silently fall back to the default chain, and a token without
        # keys would be dropped: both mean other credentials than the ones configured.
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("access_key_id and secret_access_key must be set together")
        if self.session_token is not None and self.access_key_id is None:
            raise ValueError("session_token is set without access_key_id and secret_access_key")
        return self

    def has_static_keys(self) -> bool:
        """Whether static keys are configured (else the SDK's default chain is used)."""
        return self.access_key_id is not None and self.secret_access_key is not None

    def uses_path_style(self) -> bool:
        """Whether requests address buckets path-style (``http://host/bucket/key``).

        ``path_style`` when set; otherwise path style exactly when a custom ``endpoint_url``
        is configured (S3-compatible servers rarely resolve virtual-host names).
        """
        return self.path_style if self.path_style is not None else self.endpoint_url is not None
