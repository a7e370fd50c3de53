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
    # every password-like query key libpq and SQLAlchemy accept is a secret too
    ("postgresql://user@host/db?password=s3cret&sslmode=require", "postgresql://user@host/db?password=***&sslmode=require"),
    ("postgresql://u@h/db?sslmode=require&PassWord=s3cret", "postgresql://u@h/db?sslmode=require&PassWord=***"),
    ("postgresql:///db?host=/run/pg&password=a&password=b", "postgresql:///db?host=/run/pg&password=***&password=***"),
    ("postgresql://u@h/db?sslpassword=s3cret&passfile=/home/u/.pgpass", "postgresql://u@h/db?sslpassword=***&passfile=***"),
    ("postgresql://u:s%40cret@h/db?token=t0k", "postgresql://u:***@h/db?token=***"),
])
def test_the_password_is_redacted_and_nothing_else(url, shown):
    assert redact(url) == shown


@pytest.mark.parametrize("url, secret", [
    ("postgresql://u@h/db?password=s3cret", "s3cret"), ("postgresql://u:s3cret@h/db", "s3cret"),
    ("postgresql://u:s%40cret@h/db", "s@cret"),
])
def test_a_message_quoting_the_url_loses_what_sqlalchemy_reads_as_secret(url, secret):
    """What SQLAlchemy parses decides: a driver's error may quote the password decoded or as written."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    assert secret in (parsed.password, parsed.query.get("password"))
    message = f"could not connect with {url} (password {secret!r})"
    assert secret not in redact(message, url) and url not in redact(message, url)


@pytest.mark.parametrize("url", ["mysql://me@127.0.0.1/db?password=s3cret", "oracle://u@h/db?password=s3cret",
                                 "postgresql://u:s3cret@h:port/db"])
def test_a_refused_url_never_shows_its_query_password(url):
    with pytest.raises(VitsearchError) as e:
        parse_storage_url(url)
    assert "s3cret" not in str(e.value) and "***" in str(e.value)


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
