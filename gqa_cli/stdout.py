"""The one stdout guard of every ``gqa`` subcommand: a closed or full stdout is a normal end.

``gqa search ... -o t.json | head -1`` closes the pipe after one line; the next print raises
``BrokenPipeError`` (EPIPE), and a stdout redirected to a full disk raises ENOSPC. Under the guard
the first such failure silences stdout for the rest of the run (its fd is pointed at
``/dev/null``, so no later flush fails either) and the command goes on: its output files are
still written, and it exits with its own status.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import sys

QUIET_ERRNOS = (errno.EPIPE, errno.ENOSPC)


class GuardedStream(io.TextIOBase):
    """A text stream that forwards to ``stream`` until it fails with EPIPE/ENOSPC, then discards."""

    def __init__(self, stream):
        self.stream = stream
        self.closed_by_reader = False

    def _failed(self, exc: OSError) -> None:
        if exc.errno not in QUIET_ERRNOS:
            raise exc
        self.closed_by_reader = True
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())   # the buffered rest goes nowhere, quietly
            os.close(devnull)

    def write(self, s: str) -> int:
        if not self.closed_by_reader:
            try:
                self.stream.write(s)
            except OSError as exc:
                self._failed(exc)
        return len(s)

    def flush(self) -> None:
        if not self.closed_by_reader:
            try:
                self.stream.flush()
            except OSError as exc:
                self._failed(exc)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        try:
            return not self.closed_by_reader and self.stream.isatty()
        except (OSError, ValueError):   # the wrapped stream was closed (e.g. asked at interpreter exit)
            return False

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self):
        return getattr(self.stream, "encoding", "utf-8")


@contextlib.contextmanager
def guarded_stdout():
    """Run the body with ``sys.stdout`` guarded; flush it at the end under the guard too."""
    real = sys.stdout
    guard = GuardedStream(real)
    sys.stdout = guard
    try:
        yield guard
    finally:
        guard.flush()
        sys.stdout = real
