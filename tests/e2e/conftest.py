"""e2e tests reuse the integration evidence writer (the isolated SR world, `sr_env`, is in tests/conftest.py)."""

from tests.integration.conftest import write_evidence

__all__ = ["write_evidence"]
