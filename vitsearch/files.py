"""Where vitsearch keeps its files (:func:`cache_dir`), and atomic writes: every artefact is written to a unique temporary file beside it, then renamed into place.

A reader never sees a half-written file, an interrupted write leaves the old file whole, and two writers at once
each rename a complete file (the last one wins) instead of sharing one fixed ``.tmp`` name.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


@contextlib.contextmanager
def atomic(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """An open temporary file in ``path``'s folder that replaces ``path`` when the block ends without error."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the artefact is readable like any other file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic(path) as f:
        f.write(text)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic(path, "wb") as f:
        f.write(data)


def write_json(path: str | os.PathLike[str], data: Any, **dumps: Any) -> None:
    """``data`` as indented JSON (values JSON does not know are written as their ``str``)."""
    write_text(path, json.dumps(data, indent=2, default=str, **dumps))


def save_torch(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` through a temporary file (checkpoints, resumable training state)."""
    import torch  # deferred: the report reads study folders without torch

    with atomic(path, "wb") as f:
        torch.save(obj, f)


def cache_dir() -> Path:
    """``$VITSEARCH_CACHE``, or ``~/.cache/vitsearch``: trained base models and image checks."""
    return Path(os.environ.get("VITSEARCH_CACHE") or Path.home() / ".cache" / "vitsearch").expanduser()


CACHE_FIX = "set $VITSEARCH_CACHE to a folder you can write (the default, ~/.cache/vitsearch, is under $HOME)"


def check_writable(folder: str | os.PathLike[str], what: str, fix: str) -> Path:
    """``folder``, refused with one message naming it, ``what`` it is and ``fix`` where this process can neither
    write in it nor make it: checked before the work whose results go there, not after minutes of it.

    The nearest existing folder above a missing one decides. ``os.access`` tells a read-only mount and an
    immutable folder apart even for root, for whom permission bits do not count."""
    from .errors import VitsearchError

    folder = Path(folder).expanduser()
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise VitsearchError(f"{what} {folder} cannot be made: {probe} is a file, not a folder: {fix}")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "" if probe == folder else f" ({probe} above it)"
        raise VitsearchError(f"{what} {folder} is not writable{where}: {fix}")
    return folder


def load_torch(path: str | os.PathLike[str], fix: str) -> Any:
    """A file :func:`save_torch` wrote, read with ``weights_only=True``; a truncated or damaged one is one error
    naming it and ``fix`` (what to do)."""
    import pickle

    import torch

    from .errors import VitsearchError

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        reason = str(e).strip().split(". ")[0] or type(e).__name__
        raise VitsearchError(f"{path} is truncated or damaged ({reason}): {fix}") from None
