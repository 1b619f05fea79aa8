"""A temporary MariaDB server for tests and benchmarks (the reference's own SQL, MySQL's dialect).

`MariaDbServer().start()` runs mariadb-install-db into a fresh temporary directory and starts
`mariadbd` on a free port of 127.0.0.1 (its unix socket stays in that directory), with `root`
reachable over TCP from 127.0.0.1 without a password. It never reads /etc/mysql (`--no-defaults`).
As root (containers) mariadbd refuses to run unless told `--user=root`, which is what it gets: the
server only ever touches its private directory. `stop()` stops the server and deletes the
directory. Binaries: $CC_MARIADB_BINDIR, else `mariadbd` on PATH, else /usr/sbin (Debian's
`mariadb-server` package).
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from callcenter_dev.servers import free_port, remove_dir


def _install_db(exe: Path) -> str | None:
    """mariadb-install-db beside `exe`, in /usr/bin or on PATH."""
    return shutil.which("mariadb-install-db", path=f"{exe.parent}:/usr/bin:{os.environ.get('PATH', '')}")


def find_server() -> Path | None:
    """The `mariadbd` executable, or None if MariaDB is not installed."""
    candidates: list[Path] = []
    if os.environ.get("CC_MARIADB_BINDIR"):
        candidates.append(Path(os.environ["CC_MARIADB_BINDIR"]) / "mariadbd")
    on_path = shutil.which("mariadbd")
    if on_path:
        candidates.append(Path(on_path))
    candidates.append(Path("/usr/sbin/mariadbd"))
    for exe in candidates:
        if exe.is_file() and _install_db(exe):
            return exe
    return None


@dataclass
class MariaDbServer:
    """A private MariaDB server on a free loopback port, in its own temporary directory."""

    port: int = 0
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cc-mariadb-")))
    proc: subprocess.Popen[bytes] | None = None

    def url(self, database: str = "mysql") -> str:
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/{database}?charset=utf8mb4"

    @property
    def datadir(self) -> Path:
        return self.workdir / "data"

    def _log_tail(self) -> str:
        log = self.workdir / "mariadb.log"
        return log.read_text(errors="replace")[-2000:] if log.exists() else ""

    def start(self, timeout: float = 60.0) -> MariaDbServer:
        exe = find_server()
        if exe is None:
            raise RuntimeError("MariaDB is not installed (no mariadbd / mariadb-install-db)")
        install = _install_db(exe)
        assert install is not None
        user = getpass.getuser()
        if not self.port:
            self.port = free_port()
        proc = subprocess.run(
            [install, "--no-defaults", f"--datadir={self.datadir}", f"--user={user}",
             "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve"],
            capture_output=True, text=True, timeout=timeout, cwd=self.workdir)
        if proc.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        self.proc = subprocess.Popen(
            [str(exe), "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.workdir / 'sock'}",
             f"--port={self.port}", "--bind-address=127.0.0.1", f"--user={user}", "--skip-name-resolve",
             f"--log-error={self.workdir / 'mariadb.log'}", f"--pid-file={self.workdir / 'mariadb.pid'}",
             # tests need no crash safety and little memory
             "--innodb-buffer-pool-size=32M", "--innodb-log-file-size=16M",
             "--innodb-flush-log-at-trx-commit=0", "--skip-log-bin", "--max-connections=60",
             # strict: a value the column cannot hold is an error, as on PostgreSQL (also the default)
             "--sql-mode=STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mariadbd did not start: {self._log_tail()}")
            time.sleep(0.1)
        return self

    def _ready(self) -> bool:
        import pymysql  # the `mysql` extra; only needed when a MariaDB server is used

        try:
            pymysql.connect(host="127.0.0.1", port=self.port, user="root", connect_timeout=1).close()
        except pymysql.err.OperationalError:
            return False
        return True

    def create_database(self, name: str) -> str:
        """Create an empty database (utf8mb4) and return its SQLAlchemy URL."""
        import pymysql

        conn = pymysql.connect(host="127.0.0.1", port=self.port, user="root", autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        finally:
            conn.close()
        return self.url(name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # the data directory is thrown away: no clean shutdown needed
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None
        remove_dir(self.workdir)
