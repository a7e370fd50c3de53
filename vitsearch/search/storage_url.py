"""Database URLs for a shared Optuna study (``--storage``): the driver checked, the password never shown.

``postgresql://user:secret@host/db`` becomes the URL Optuna's RDB storage opens, with the installed driver
named (``postgresql+psycopg2://...``), and the URL shown in messages and recorded in ``study.json``
(``postgresql://user:***@host/db``). A missing driver is one message naming the package to install, before
any connection is tried.

:func:`redact` is the one place a URL's secrets are hidden: the password, and the value of every password-like
query key (``?password=``, ``?sslpassword=``, ``?token=``: libpq and SQLAlchemy accept them), as SQLAlchemy's
``make_url`` reads them; also in text that may quote the URL (a driver's error).
"""
from __future__ import annotations

import importlib.util
import re
from typing import NamedTuple
from urllib.parse import quote, quote_plus

from ..errors import VitsearchError

# backend -> (driver, its module, the pip package that installs it), the preferred driver first
DRIVERS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "postgresql": (("psycopg2", "psycopg2", "psycopg2-binary"), ("psycopg", "psycopg", "psycopg[binary]")),
    "mysql": (("pymysql", "pymysql", "pymysql"), ("mysqldb", "MySQLdb", "mysqlclient")),
    "sqlite": (("pysqlite", "sqlite3", "(part of Python)"),),
}
_PASSWORD = re.compile(r"^(?P<head>[A-Za-z][\w+.-]*://[^:/@]*):.*@")  # to the last @: a password may hold / or @
# A query key whose value is a secret (password, sslpassword, passfile, token, api_key, auth, credentials, ...).
_SECRET_KEY = re.compile(r"pass|pwd|secret|token|key|auth|cred", re.IGNORECASE)
_QUERY_ITEM = re.compile(r"(?P<key>[?&;][^=&#;?]*)=(?P<value>[^&#;]*)")
MASK = "***"


class StorageUrl(NamedTuple):
    rdb: str  # what Optuna's RDBStorage opens: the driver named, the password kept
    redacted: str  # for messages, logs and study.json: the password as ***


def _secrets(url: str) -> list[str]:
    """What SQLAlchemy reads from ``url`` as secrets: the password and every value of a password-like query key,
    each also as it may be written percent-encoded."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # not a URL SQLAlchemy reads (ArgumentError, or ValueError for a bad port): nothing it would use
        return []
    found = [parsed.password] if parsed.password else []
    for key, value in parsed.query.items():
        if _SECRET_KEY.search(key):
            found += [value] if isinstance(value, str) else list(value)
    found = [str(s) for s in found if s]
    return sorted({f for s in found for f in (s, quote(s, safe=""), quote_plus(s))}, key=len, reverse=True)


def redact(text: str, url: str | None = None) -> str:
    """``text`` without the secrets of ``url`` (by default ``text`` is the URL): ``postgresql://user:***@host/db``,
    ``postgresql://user@host/db?password=***``. Given ``url``, ``text`` is a message that may quote it (a
    driver's error): each secret SQLAlchemy reads from ``url`` becomes ``***`` wherever it appears."""
    secrets = _secrets(text if url is None else url)
    if url is None:
        text = _PASSWORD.sub(rf"\g<head>:{MASK}@", text)
        text = _QUERY_ITEM.sub(lambda m: f"{m['key']}={MASK}" if _SECRET_KEY.search(m["key"]) else m[0], text)
        # What SQLAlchemy would still read as a secret of the redacted URL (one the patterns above missed) goes too.
        secrets = [s for s in secrets if s in _secrets(text)]
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def parse_storage_url(url: str) -> StorageUrl:
    """The RDB URL and the redacted one; refuses a URL that is not one, an unsupported database, or a driver
    that is not installed (naming the pip package)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    shown = redact(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
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
