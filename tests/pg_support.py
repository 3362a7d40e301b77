"""A throw-away PostgreSQL cluster for the tests: started once per session, one fresh database per test.

`PgCluster.start()` runs `initdb` into a temporary folder, starts `postgres` on 127.0.0.1 on a free port (no Unix
socket, a random password, fsync off: nothing here must survive the session) and `stop()` removes it all again.
PostgreSQL refuses to run as root, so under root (CI, containers) the server runs as a system user `wbcpg`,
created with `useradd` when missing (`nobody` when that fails).

Where PostgreSQL is not installed the PostgreSQL half of the tests is skipped with the reason, except under CI=true:
there a missing server is an error, so a green CI always means both databases were tested.
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ci_support import skip_unless_ci

BACKENDS = ("sqlite", "postgresql")
SERVICE_USER = "wbcpg"
SUPERUSER = "wbc"
_TOOLS = ("initdb", "pg_ctl", "postgres")
# Throw-away settings: durability off (a crash loses nothing we need), no socket file, room for the tests that
# start several worker processes and threads at once.
_SETTINGS = """
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
shared_buffers = 32MB
log_min_messages = warning
"""


def unavailable(reason: str) -> None:
    """Skip the calling test saying why PostgreSQL is missing; under CI fail loudly instead."""
    skip_unless_ci(f"PostgreSQL tests skipped: {reason} (install Debian's `postgresql` package to run them)",
                   f"CI runs every database test on PostgreSQL too, but {reason}")


def find_bindir() -> Path | None:
    """The folder with initdb, pg_ctl and postgres: Debian's newest /usr/lib/postgresql/N/bin, else the PATH."""
    def version(path: str) -> int:
        match = re.search(r"/postgresql/(\d+)/", path)
        return int(match.group(1)) if match else 0

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent))
    for folder in candidates:
        if all(os.access(Path(folder) / tool, os.X_OK) for tool in _TOOLS):
            return Path(folder)
    return None


def _service_account() -> pwd.struct_passwd | None:
    """The account the server runs as: None (this user) unless we are root, which PostgreSQL refuses."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        pass
    made = subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin",
                           SERVICE_USER], capture_output=True, text=True)
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        try:
            return pwd.getpwnam("nobody")
        except KeyError:
            raise RuntimeError(f"running as root and cannot create the user {SERVICE_USER!r} to run PostgreSQL "
                               f"as: {made.stderr.strip()}") from None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgCluster:
    """One temporary PostgreSQL cluster (data folder, server process) and the databases made on it."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="wbc-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.password = secrets.token_hex(16)
        self.port = 0
        self._account = _service_account()
        self._names = itertools.count(1)
        self._admin: Any = None
        self._template: str | None = None
        self.running = False
        self.startup_s = 0.0

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        kwargs: dict[str, Any] = {}
        if self._account is not None:
            kwargs = {"user": self._account.pw_uid, "group": self._account.pw_gid, "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}
        return subprocess.run([str(self.bindir / args[0]), *args[1:]], cwd=self.root, env=env, capture_output=True,
                              text=True, timeout=timeout, **kwargs)

    def start(self) -> PgCluster:
        """initdb and start the server; RuntimeError with the server's own words if it will not."""
        if self._account is not None:
            os.chown(self.root, self._account.pw_uid, self._account.pw_gid)
        os.chmod(self.root, 0o700)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self._account is not None:
            os.chown(pwfile, self._account.pw_uid, self._account.pw_gid)
        init = self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, f"--pwfile={pwfile}",
                         "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale", "--no-sync")
        pwfile.unlink()
        if init.returncode:
            raise RuntimeError(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(_SETTINGS)
        for _attempt in range(5):  # a free port can be taken between picking and binding it
            self.port = free_port()
            started = self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                                "-o", f"-p {self.port}")
            if started.returncode == 0:
                self.running = True
                atexit.register(self.stop)
                return self
            if "address already in use" not in self.log_tail().lower():
                break
        raise RuntimeError(f"PostgreSQL did not start: {started.stderr.strip()}\n{self.log_tail()}")

    def log_tail(self, n: int = 20) -> str:
        """The last lines of the server log (for error messages)."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of one database on this cluster."""
        return f"postgresql+psycopg://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _admin_engine(self):  # noqa: ANN202
        if self._admin is None:
            from sqlalchemy import create_engine
            from sqlalchemy.pool import NullPool

            self._admin = create_engine(self.url(), isolation_level="AUTOCOMMIT", poolclass=NullPool)
        return self._admin

    def create_database(self, migrated: bool = False) -> str:
        """A new database, its URL: empty (from template0), or with migrated=True a copy of one that the
        session's first call migrated to head (copying it is quicker than migrating every test's database)."""
        from sqlalchemy import text

        template = self._migrated_template() if migrated else "template0"
        name = f"wbc_t{os.getpid()}_{next(self._names)}"
        with self._admin_engine().connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
        return self.url(name)

    def _migrated_template(self) -> str:
        if self._template is None:
            from db.engine import Database
            from db.migrate import ensure_schema

            url = self.create_database()
            database = Database(url)
            try:
                ensure_schema(database)
            finally:
                database.dispose()  # a template must have no connections while it is copied
            self._template = url.rsplit("/", 1)[1]
        return self._template

    def drop_database(self, url: str) -> None:
        """Drop a database made by create_database, closing whatever connections a test left open on it."""
        from sqlalchemy import text

        name = url.rsplit("/", 1)[1]
        with self._admin_engine().connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    @contextmanager
    def fresh_database(self, migrated: bool = False) -> Iterator[str]:
        """A new database for one test (empty, or migrated to head), dropped afterwards."""
        url = self.create_database(migrated)
        try:
            yield url
        finally:
            self.drop_database(url)

    def stop(self) -> None:
        """Stop the server and remove its folder (idempotent)."""
        if self._admin is not None:
            self._admin.dispose()
            self._admin = None
        if self.running:
            self.running = False
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "60")
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster() -> PgCluster:
    """A running throw-away cluster, or skip (fail under CI) saying why there is none."""
    bindir = find_bindir()
    if bindir is None:
        unavailable("initdb, pg_ctl and postgres were found neither in /usr/lib/postgresql/*/bin nor on the PATH")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("the driver psycopg is not installed (pip install -r requirements.txt)")
    cluster = PgCluster(bindir)
    t0 = time.monotonic()
    try:
        cluster.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        cluster.stop()
        unavailable(f"a throw-away PostgreSQL cluster from {bindir} would not start: {exc}")
    cluster.startup_s = time.monotonic() - t0
    return cluster
