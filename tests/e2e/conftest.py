"""e2e tests reuse the integration fixtures (isolated SR world, evidence writer)."""

from tests.integration.conftest import sr_env, write_evidence

__all__ = ["sr_env", "write_evidence"]
