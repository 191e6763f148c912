"""The ``sr`` command line. See :func:`worker.cli.main.main`."""

from worker.cli.main import main

__all__ = ["main"]
