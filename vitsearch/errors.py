"""User-facing errors: one message that names the input, what was expected and what to do.

The CLI tells them apart by exit code: :class:`VitsearchError` is bad input (2, like a bad command line), a
:class:`RunFailure` happened while running on input that was fine (1): a device, database or hub out of reach,
a measurement that failed.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator


class VitsearchError(Exception):
    """Bad input or an unavailable resource. The CLI prints the message without a traceback (``--debug`` shows it)."""


class RunFailure(VitsearchError):
    """The input was fine, running it failed: retrying later, or fixing the machine, device or network, may help."""


@contextlib.contextmanager
def naming(path: str | os.PathLike[str]) -> Iterator[None]:
    """Give an ``OSError`` raised inside the block ``path`` as its filename where it has none.

    A file object's ``write``, ``flush`` and ``close`` raise without a filename (a full disk shows up there),
    and the CLI's one line for a full disk names the file it could not write."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = os.fspath(path)
        raise


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, after what was completed is kept: the message says what and how to go on (the CLI exits 130)."""
