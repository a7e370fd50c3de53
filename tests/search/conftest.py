"""What the search tests share: a small digits space, the search inputs, and a real PostgreSQL server on loopback."""
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

PG_BIN = Path("/usr/lib/postgresql")


def _pg_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(PG_BIN.glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _postgres_server():
    """A throwaway PostgreSQL cluster on 127.0.0.1, trust auth: yields (URL of database ``studies``, stop), removed
    afterwards."""
    initdb, pg_ctl = _pg_tool("initdb"), _pg_tool("pg_ctl")
    if not (initdb and pg_ctl):
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL server binaries are missing: .ci/run installs Debian's postgresql package")
        pytest.skip("PostgreSQL server binaries (Debian package postgresql) are not installed")
    root = Path(tempfile.mkdtemp(prefix="vitsearch-pg-"))  # outside pytest's root-only tmp tree
    data, port = root / "data", _free_port()
    # postgres refuses to run as root: run the server as the postgres user when we are root.
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
        os.chmod(root, 0o755)
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True, timeout=120)
    stopped = []

    def stop() -> None:
        if not stopped:
            run(pg_ctl, "-D", str(data), "-m", "immediate", "stop")
            stopped.append(True)

    run(initdb, "-D", str(data), "-U", "vitsearch", "--auth=trust", "-E", "UTF8")
    run(pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60", "-o",
        f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root}", "start")
    try:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="vitsearch", dbname="postgres")
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        conn.cursor().execute("CREATE DATABASE studies")
        conn.close()
        yield f"postgresql://vitsearch@127.0.0.1:{port}/studies", stop
    finally:
        stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server's database URL, shared by a module's tests."""
    with _postgres_server() as (url, _):
        yield url


@pytest.fixture
def stoppable_postgres():
    """A PostgreSQL server of the test's own: (database URL, a function that stops the server at once)."""
    with _postgres_server() as server:
        yield server


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """The digits space with one uniform baseline per method (three baselines in all), to keep the tests short."""
    from vitsearch.search import default_space_file

    text = default_space_file("digits").read_text().replace("keep = [0.9, 0.7, 0.5, 0.3]", "keep = [0.5]")
    text = text.replace('methods = ["spvit", "evovit", "tome", "evit"]', 'methods = ["spvit", "evovit"]')
    path = tmp_path_factory.mktemp("space") / "vit.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def lean_space(space):
    """The same space with the unpruned model as its only baseline: for the tests that train for long (baselines
    train as long as candidates), where the baselines are not what is under test."""
    path = space.with_name("lean.toml")
    path.write_text(space.read_text().replace("keep = [0.5]", "keep = []"))
    return path


@pytest.fixture(scope="module")
def env(tables, space, checkpoint):
    """The search command's inputs as strings: a coarse CPU table, the small space, the test checkpoint."""
    return {"tables": str(tables), "space": str(space), "checkpoint": str(checkpoint)}
