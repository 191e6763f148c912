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
        region: signing region.
        access_key_id / secret_access_key: static credentials; ``None`` uses boto3's
            default credential chain (``AWS_*`` env, profiles, instance roles).
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
        pydantic.ValidationError: a field is out of range, or ``sse_kms_key_id`` is set
            without ``sse="aws:kms"`` (the message never repeats a value).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
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

    def uses_path_style(self) -> bool:
        """Whether requests address buckets path-style (``http://host/bucket/key``).

        ``path_style`` when set; otherwise path style exactly when a custom ``endpoint_url``
        is configured (S3-compatible servers rarely resolve virtual-host names).
        """
        return self.path_style if self.path_style is not None else self.endpoint_url is not None
