"""Progress bars of the long commands (``replay``, ``simulate``, ``bench``): rich, on stderr,
and only when stderr is a terminal, so that logs, pipes and CI output stay plain text."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


class Bar:
    """One task of a progress display; every method does nothing when there is none."""

    def __init__(self, progress: Progress | None = None, task: TaskID | None = None) -> None:
        self._progress = progress
        self._task = task

    @property
    def shown(self) -> bool:
        return self._progress is not None

    def update(
        self,
        completed: float | None = None,
        *,
        total: float | None = None,
        description: str | None = None,
        note: str | None = None,
    ) -> None:
        if self._progress is None or self._task is None:
            return
        extra = {} if note is None else {"note": note}
        self._progress.update(
            self._task, completed=completed, total=total, description=description, **extra
        )

    def advance(self, amount: float = 1) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, amount)


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal (rich alone would also draw for FORCE_COLOR)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


@contextmanager
def progress_bar(
    description: str,
    total: float | None = None,
    *,
    unit: str = "",
    in_bytes: bool = False,
    stream: TextIO | None = None,
) -> Iterator[Bar]:
    """A bar counting ``unit`` (or bytes) up to ``total`` (None: unknown), drawn on
    ``stream`` (stderr by default) when it is a terminal and erased at the end."""
    stream = sys.stderr if stream is None else stream
    if not is_terminal(stream):
        yield Bar()
        return
    count: ProgressColumn = DownloadColumn() if in_bytes else MofNCompleteColumn()
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        count,
        TextColumn(unit),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=Console(file=stream), transient=True) as progress:
        yield Bar(progress, progress.add_task(description, total=total, note=""))
