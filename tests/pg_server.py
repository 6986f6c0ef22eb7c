"""A private PostgreSQL for the tests: its own data directory, a free port, gone at the end.

``postgres`` (a session fixture; import it into a test module) starts one
server for the whole run and gives a ``PostgresServer``: ``dsn()``
(libpq's key=value form), ``url(driver)`` (SQLAlchemy's), and the
settings of Django's ``DATABASES`` entry. The server runs from Debian's
``/usr/lib/postgresql/<version>/bin`` or the ``PATH``; PostgreSQL refuses
to run as root, so under root it runs as the ``postgres`` user (Debian's
package makes it), else ``nobody``. Without PostgreSQL the tests skip,
except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass

import pytest

from conftest import IN_CI

DATABASE = "pynba_test"
# The server's processes are not what a test checks: not run with the
# sanitizers' runtime that .ci/sanitize preloads for Python (initdb hangs).
SERVER_ENVIRONMENT = {
    name: value
    for name, value in os.environ.items()
    if name not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")
}

USER = "postgres"


def binaries() -> str | None:
    """The directory of initdb, pg_ctl and postgres (the newest version), or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda path: int(path.split("/")[4]) if path.split("/")[4].isdigit() else 0,
    )
    if found:
        return os.path.dirname(found[-1])
    pg_ctl = shutil.which("pg_ctl")
    return os.path.dirname(os.path.realpath(pg_ctl)) if pg_ctl else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PostgresServer:
    host: str
    port: int
    database: str
    user: str

    def dsn(self, database: str | None = None) -> str:
        return (
            f"host={self.host} port={self.port} dbname={database or self.database} user={self.user}"
        )

    def url(self, driver: str = "psycopg") -> str:
        return f"postgresql+{driver}://{self.user}@{self.host}:{self.port}/{self.database}"

    def django_database(self) -> dict:
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": self.database,
            "USER": self.user,
            "HOST": self.host,
            "PORT": str(self.port),
        }


def _server_user() -> pwd.struct_passwd | None:
    """The user the server runs as: None (this one) unless this is root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root, and no postgres or nobody user to run PostgreSQL as")


class _Cluster:
    """initdb, pg_ctl start and stop, as a user PostgreSQL accepts."""

    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.user = _server_user()
        self.root = tempfile.mkdtemp(prefix="pynba-pg-")
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "server.log")
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self.port = free_port()

    def run(self, tool: str, *args: str) -> None:
        kwargs = {}
        if self.user is not None:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        completed = subprocess.run(
            [os.path.join(self.bindir, tool), *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=120,
            env={**SERVER_ENVIRONMENT, "LC_ALL": "C", "TZ": "UTC"},
            **kwargs,
        )
        if completed.returncode != 0:
            log = ""
            if os.path.exists(self.log):
                with open(self.log) as file:
                    log = file.read()[-4000:]
            raise RuntimeError(
                f"{tool} failed ({completed.returncode}): {completed.stdout}{completed.stderr}{log}"
            )

    def start(self) -> None:
        self.run("initdb", "-D", self.data, "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync")
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c timezone=UTC"
        )
        self.run("pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "start")
        self.run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, DATABASE)

    def stop(self) -> None:
        try:
            if os.path.exists(os.path.join(self.data, "postmaster.pid")):
                self.run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    """A running PostgreSQL with an empty database ``pynba_test``, for the whole session."""
    bindir = binaries()
    if bindir is None or not os.path.exists(os.path.join(bindir, "initdb")):
        message = "PostgreSQL is not installed (initdb, pg_ctl: apt-get install postgresql)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    cluster = _Cluster(bindir)
    try:
        cluster.start()
        yield PostgresServer("127.0.0.1", cluster.port, DATABASE, USER)
    finally:
        cluster.stop()
