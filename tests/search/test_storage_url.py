"""Storage URLs for shared studies: the installed driver named, the password never shown, a missing driver named."""
from __future__ import annotations

import importlib.util

import pytest

from vitsearch.errors import VitsearchError
from vitsearch.search.storage_url import parse_storage_url, redact


@pytest.mark.parametrize("url, shown", [
    ("postgresql://user:secret@host/db", "postgresql://user:***@host/db"),
    ("postgresql://user:p@ss:w/rd@host:5432/db", "postgresql://user:***@host:5432/db"),
    ("mysql+pymysql://me:x@127.0.0.1/db?charset=utf8", "mysql+pymysql://me:***@127.0.0.1/db?charset=utf8"),
    ("postgresql://user@host:5432/db", "postgresql://user@host:5432/db"),
    ("postgresql://host:5432/db", "postgresql://host:5432/db"),
    ("sqlite:///reports/study.db", "sqlite:///reports/study.db"),
])
def test_the_password_is_redacted_and_nothing_else(url, shown):
    assert redact(url) == shown


def test_postgresql_gets_the_installed_driver(tmp_path):
    if importlib.util.find_spec("psycopg2") is None:
        pytest.skip("psycopg2 is not installed")
    url = parse_storage_url("postgresql://user:secret@127.0.0.1:5432/db")
    assert url.rdb == "postgresql+psycopg2://user:secret@127.0.0.1:5432/db"
    assert url.redacted == "postgresql://user:***@127.0.0.1:5432/db"
    assert parse_storage_url(f"sqlite:///{tmp_path}/s.db").rdb == f"sqlite+pysqlite:///{tmp_path}/s.db"


def test_mysql_without_a_driver_names_the_package():
    if importlib.util.find_spec("pymysql") or importlib.util.find_spec("MySQLdb"):
        pytest.skip("a MySQL driver is installed here")
    with pytest.raises(VitsearchError) as e:
        parse_storage_url("mysql://me:secret@127.0.0.1/db")
    assert "'mysql://me:***@127.0.0.1/db' needs a mysql driver" in str(e.value)
    assert "pip install 'pymysql' or pip install 'mysqlclient'" in str(e.value) and "secret" not in str(e.value)
    with pytest.raises(VitsearchError, match="pip install 'mysqlclient'$"):
        parse_storage_url("mysql+mysqldb://me@127.0.0.1/db")


@pytest.mark.parametrize("url, message", [("nonsense", "is not a database URL"),
                                          ("postgres://u:pw@h/db", "'postgres' is not a database vitsearch shares"),
                                          ("oracle://u:pw@h/db", "use one of postgresql, mysql, sqlite")])
def test_what_is_no_supported_database_url_is_refused(url, message):
    with pytest.raises(VitsearchError, match=message) as e:
        parse_storage_url(url)
    assert "pw" not in str(e.value)
