"""The check every image of an ImageFolder passes once, before the first training step.

A corrupt, truncated, zero-byte or decompression-bomb file found by a DataLoader worker in the middle of a search
is a traceback after hours of work; found here it is one message naming every such file. vitsearch **refuses**
such a data set rather than skipping the files: a skipped image silently changes the data set (and its split) that
a study records, so two runs over one folder could train on different images. The fix is quick and the message
names each file and what is wrong with it.

Each image is opened, its pixel count checked against PIL's decompression-bomb limit
(``PIL.Image.MAX_IMAGE_PIXELS``, read at check time, so a user who raised it for their data keeps that) and decoded
(a JPEG at 1/8 scale: every byte of it is still read, at a fraction of the cost). Files that pass are remembered by
size and modification time in the cache (``$VITSEARCH_CACHE/image_checks/``), so a resumed search or a finalize
does not decode a million images again; a changed or new file is checked again.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Iterator, Sequence

from .errors import VitsearchError
from .files import cache_dir

logger = logging.getLogger(__name__)

SHOWN = 10  # bad files named in the message; when there are more, all are listed in a file beside the cache
PROGRESS_SECONDS = 10.0  # a long check logs how far it got this often
_CHUNK = 64  # images per task handed to a checking process


def image_problem(path: str | Path) -> str | None:
    """What makes the image at ``path`` unusable for training, or None if it decodes within the size limit."""
    from PIL import Image, UnidentifiedImageError

    try:
        if os.path.getsize(path) == 0:
            return "an empty (zero-byte) file"
        with warnings.catch_warnings():
            # PIL warns above the limit and raises above twice it; the limit itself is enforced just below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                limit = Image.MAX_IMAGE_PIXELS
                if limit and img.width * img.height > limit:
                    return (f"{img.width}x{img.height} pixels, over the decompression-bomb limit of {limit:,} "
                            "(PIL.Image.MAX_IMAGE_PIXELS)")
                img.draft(None, (max(1, img.width // 8), max(1, img.height // 8)))  # JPEG only: decode at 1/8
                img.load()
    except Image.DecompressionBombError as e:
        return f"a decompression bomb: {e}"
    except UnidentifiedImageError:
        return "not an image PIL can read (corrupt, or not an image file)"
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # PIL's words for truncated and damaged data
        return f"cannot be decoded ({e})"
    return None


def _problems(paths: Sequence[str]) -> list[str | None]:
    return [image_problem(p) for p in paths]


def check_images(root: str | Path, paths: Sequence[str | Path], *, workers: int = 0) -> None:
    """Raise one :class:`VitsearchError` naming every file of ``paths`` (under the data set folder ``root``) that
    :func:`image_problem` rejects. ``workers`` processes check in parallel (0: this process)."""
    root = Path(os.path.abspath(root))  # abspath, not resolve: relative names stay string arithmetic
    paths = [os.path.abspath(p) for p in paths]
    record = _cache_file(root)
    known = _read_cache(record)
    stats = {p: _stat(p) for p in paths}
    todo = [p for p, st in stats.items() if st is None or known.get(_rel(p, root)) != st]
    bad: dict[str, str] = {}
    if todo:
        logger.info("checking %d of %d images in %s before training (%d already checked)", len(todo), len(paths),
                    root, len(paths) - len(todo))
        chunks = [todo[i:i + _CHUNK] for i in range(0, len(todo), _CHUNK)]
        started = last_log = time.monotonic()
        done = 0
        for chunk, problems in zip(chunks, _checked(chunks, workers)):
            bad.update((p, why) for p, why in zip(chunk, problems) if why is not None)
            done += len(chunk)
            if time.monotonic() - last_log > PROGRESS_SECONDS and done < len(todo):
                last_log = time.monotonic()
                logger.info("checked %d of %d images (%.0f s)%s", done, len(todo), last_log - started,
                            "" if workers else "; --workers N checks them in N processes")
        known.update((_rel(p, root), stats[p]) for p in todo if p not in bad and stats[p] is not None)
        _write_cache(record, root, known)
    if bad:
        raise VitsearchError(_message(root, bad, len(paths), record.with_suffix(".bad.txt")))


def _message(root: Path, bad: dict[str, str], total: int, listing: Path) -> str:
    lines = [f"{_rel(p, root)}: {why}" for p, why in sorted(bad.items())]
    shown = "; ".join(lines[:SHOWN])
    more = ""
    if len(lines) > SHOWN:
        listing.write_text("\n".join(lines) + "\n")
        more = f"; and {len(lines) - SHOWN} more, all listed in {listing}"
    return (f"{len(bad)} of {total} images in the data set {str(root)!r} cannot be trained on: {shown}{more}. "
            "Delete or replace these files (downscale an oversized one), or move them out of the data set folder, "
            "and run again")


def _checked(chunks: Sequence[list[str]], workers: int) -> Iterator[list[str | None]]:
    """The problems of each chunk, in order: in ``workers`` processes, or in this one."""
    if workers == 0:
        yield from map(_problems, chunks)
        return
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_problems, chunks)


def _stat(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _rel(path: str, root: Path) -> str:
    return os.path.relpath(path, root)  # string arithmetic: a million resolve() calls would each walk the path


def _cache_file(root: Path) -> Path:
    folder = cache_dir() / "image_checks"
    return folder / f"{hashlib.sha256(str(root).encode()).hexdigest()[:16]}.json"


def _read_cache(path: Path) -> dict[str, list[int]]:
    try:
        return dict(json.loads(path.read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):  # missing or unreadable: check everything again
        return {}


def _write_cache(path: Path, root: Path, files: dict[str, list[int]]) -> None:
    """Remember the checked files; a cache that cannot be written only costs the next run the same check."""
    from .files import CACHE_FIX

    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # several workers may check one folder at once
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"root": str(root), "files": files}))
        tmp.replace(path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        logger.warning("cannot keep the image check in %s (%s): the next run checks the images again; %s",
                       path.parent, e.strerror or e, CACHE_FIX)
