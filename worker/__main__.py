"""``python -m worker`` is the same as ``sr``."""

from worker.cli.main import run

run()
