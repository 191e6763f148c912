"""What several ``sr`` commands share: the progress bar of long operator work."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

__all__ = ["console_progress"]


def console_progress(console: Console) -> Progress:
    """A progress bar (spinner, description, bar, done/total, elapsed) on ``console``."""
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)
