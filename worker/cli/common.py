"""What several ``sr`` commands share: the progress bar of long operator work, and printing
results in the chosen output format (table, json, jsonl; see :mod:`worker.cli.options`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

__all__ = ["console_progress", "print_document", "print_rows"]


def console_progress(console: Console) -> Progress:
    """A progress bar (spinner, description, bar, done/total, elapsed) on ``console``."""
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)


def _dumps(value: Any) -> str:
    # default=str: datetimes and paths print as their ISO / plain text, never fail the output.
    return json.dumps(value, default=str)


def print_document(output: str, doc: Mapping[str, Any], human: Callable[[], None]) -> None:
    """Print a command's one result: json and jsonl print ``doc`` as one JSON line; table
    calls ``human``."""
    if output == "table":
        human()
    else:
        print(_dumps(doc), flush=True)


def print_rows(output: str, rows: Sequence[Mapping[str, Any]], human: Callable[[], None]) -> None:
    """Print a command's list of results: json prints one JSON array, jsonl one object per
    line, table calls ``human``."""
    if output == "table":
        human()
    elif output == "json":
        print(_dumps(list(rows)), flush=True)
    else:
        for row in rows:
            print(_dumps(row), flush=True)
