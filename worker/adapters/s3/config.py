"""Connection and retry settings of the S3 adapter (:class:`S3Config`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

__all__ = ["ClientLibrary", "S3Config"]

#: The client libraries the adapter can send requests with.
ClientLibrary = Literal["obstore", "boto3"]


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

    def uses_path_style(self) -> bool:
        """Whether requests address buckets path-style (``http://host/bucket/key``).

        ``path_style`` when set; otherwise path style exactly when a custom ``endpoint_url``
        is configured (S3-compatible servers rarely resolve virtual-host names).
        """
        return self.path_style if self.path_style is not None else self.endpoint_url is not None
