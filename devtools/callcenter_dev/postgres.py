"""A temporary PostgreSQL server for tests and benchmarks (real SQL behaviour, not SQLite's).

`PostgresServer().start()` runs initdb into a fresh temporary directory and starts `postgres` on a
free port of 127.0.0.1 (its unix socket stays in that directory), trusting local connections for
the superuser `cc`. As root (containers), initdb and postgres refuse to run, so both are run as an
unprivileged user (`postgres` if it exists, else `nobody`) through runuser. `stop()` stops the
server and deletes the directory. Binaries: $CC_PG_BINDIR, else `pg_ctl` on PATH, else the newest
/usr/lib/postgresql/<version>/bin.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from callcenter_dev.servers import free_port, remove_dir

SUPERUSER = "cc"


def find_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None if PostgreSQL is not installed."""
    candidates: list[Path] = []
    if os.environ.get("CC_PG_BINDIR"):
        candidates.append(Path(os.environ["CC_PG_BINDIR"]))
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)

    def version(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)]
    for bindir in candidates:
        if all((bindir / exe).is_file() for exe in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


def _run_as() -> str | None:
    """The unprivileged user to run PostgreSQL as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and neither the 'postgres' nor the 'nobody' user exists")


@dataclass
class PostgresServer:
    """A private PostgreSQL cluster on a free loopback port, in its own temporary directory."""

    port: int = 0
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cc-pg-")))
    bindir: Path | None = None
    user: str | None = None
    started: bool = False

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @property
    def datadir(self) -> Path:
        return self.workdir / "data"

    def _cmd(self, exe: str, *args: str) -> list[str]:
        assert self.bindir is not None
        cmd = [str(self.bindir / exe), *args]
        return ["runuser", "-u", self.user, "--", *cmd] if self.user else cmd

    def _check(self, cmd: list[str], timeout: float) -> None:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.workdir)
        if proc.returncode != 0:
            log = self.workdir / "postgres.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}\n{tail}")

    def start(self, timeout: float = 30.0) -> PostgresServer:
        self.bindir = self.bindir or find_bindir()
        if self.bindir is None:
            raise RuntimeError("PostgreSQL is not installed (initdb, pg_ctl, postgres not found)")
        self.user = _run_as()
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(self.workdir, entry.pw_uid, entry.pw_gid)
        self.workdir.chmod(0o700)
        if not self.port:
            self.port = free_port()
        # tests need no crash safety: skipping fsync makes initdb and every commit much faster
        self._check(self._cmd("initdb", "-D", str(self.datadir), "-U", SUPERUSER, "--auth=trust",
                              "--no-sync", "-E", "UTF8", "--locale=C"), timeout)
        options = " ".join([
            "-c listen_addresses=127.0.0.1", f"-p {self.port}", f"-k {self.workdir}",
            "-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off",
            "-c max_connections=50", "-c shared_buffers=16MB",
            # containers often have a tiny /dev/shm
            "-c dynamic_shared_memory_type=mmap",
        ])
        self._check(self._cmd("pg_ctl", "-D", str(self.datadir), "-l", str(self.workdir / "postgres.log"),
                              "-o", options, "-w", "-t", str(int(timeout)), "start"), timeout + 5)
        self.started = True
        return self

    def create_database(self, name: str) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        # the `postgres` extra; only needed when a PostgreSQL server is used
        import psycopg
        from psycopg import sql

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def stop(self) -> None:
        if self.started:
            try:
                # immediate: no checkpoint; the data directory is thrown away anyway
                self._check(self._cmd("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop"), 30)
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            self.started = False
        remove_dir(self.workdir)
