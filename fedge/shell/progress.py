"""Progress for long work that reads the same on a terminal and in a log file."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console


@contextmanager
def long_step(console: Console, message: str) -> Iterator[None]:
    """A spinner on a terminal; a plain line when output goes to a file, where a spinner would print nothing."""
    if console.is_terminal:
        with console.status(message):
            yield
    else:
        console.print(f"{message} …")
        yield
