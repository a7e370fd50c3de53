"""Database URLs for a shared Optuna study (``--storage``): the driver checked, the password never shown.

``postgresql://user:secret@host/db`` becomes the URL Optuna's RDB storage opens, with the installed driver
named (``postgresql+psycopg2://...``), and the URL shown in messages and recorded in ``study.json``
(``postgresql://user:***@host/db``). A missing driver is one message naming the package to install, before
any connection is tried.
"""
from __future__ import annotations

import importlib.util
import re
from typing import NamedTuple

from ..errors import VitsearchError

# backend -> (driver, its module, the pip package that installs it), the preferred driver first
DRIVERS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "postgresql": (("psycopg2", "psycopg2", "psycopg2-binary"), ("psycopg", "psycopg", "psycopg[binary]")),
    "mysql": (("pymysql", "pymysql", "pymysql"), ("mysqldb", "MySQLdb", "mysqlclient")),
    "sqlite": (("pysqlite", "sqlite3", "(part of Python)"),),
}
_PASSWORD = re.compile(r"^(?P<head>[A-Za-z][\w+.-]*://[^:/@]*):.*@")  # to the last @: a password may hold / or @


class StorageUrl(NamedTuple):
    rdb: str  # what Optuna's RDBStorage opens: the driver named, the password kept
    redacted: str  # for messages, logs and study.json: the password as ***


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (``postgresql://user:***@host/db``); other text unchanged."""
    return _PASSWORD.sub(r"\g<head>:***@", url)


def parse_storage_url(url: str) -> StorageUrl:
    """The RDB URL and the redacted one; refuses a URL that is not one, an unsupported database, or a driver
    that is not installed (naming the pip package)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    shown = redact(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise VitsearchError(f"--storage {shown!r} is not a database URL: write postgresql://user@host/db, "
                             "mysql://user@host/db or sqlite:///path/to/file.db") from None
    backend, driver = parsed.get_backend_name(), parsed.drivername.partition("+")[2]
    if backend not in DRIVERS:
        raise VitsearchError(f"--storage {shown!r}: {backend!r} is not a database vitsearch shares studies in; "
                             f"use one of {', '.join(DRIVERS)} (e.g. postgresql://user@host/db)")
    known = DRIVERS[backend]
    candidates = [d for d in known if d[0] == driver] if driver else list(known)
    if not candidates:  # a driver we do not know: SQLAlchemy may still load it
        return StorageUrl(url, shown)
    for name, module, _ in candidates:
        if importlib.util.find_spec(module) is not None:
            rdb = parsed.set(drivername=f"{backend}+{name}").render_as_string(hide_password=False)
            return StorageUrl(rdb, shown)
    packages = " or ".join(f"pip install '{package}'" for _, _, package in candidates)
    raise VitsearchError(f"--storage {shown!r} needs a {backend} driver for Python, and none is installed: "
                         f"{packages}")
