"""The shipped package, proven the way the image uses it.

The wheel is built from a clean export of the tracked files (`git ls-files`, copied from the
working tree so uncommitted changes count), installed with the service extras only (as the
Dockerfile does: no `test`, no `dev`, no callcenter-dev) into a scratch virtualenv, and then:
every module of every package in it imports, the Alembic migrations run from it, and every
console script answers `--help` with its usage and exit 0 without starting anything.

pip reaches the package index; its cache makes a second run quick.
"""

from __future__ import annotations

import configparser
import os
import shutil
import socket
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SERVICE_EXTRAS = "sip-edge,api,postgres,celery"  # what the Dockerfile installs
# console scripts that are clients of the api, not services: the setting their --help must name
CLIENTS = {"callcenter": "CC_API_URL"}
# run by Alembic inside a migration context, never imported as modules: test_migrations_run covers them
ALEMBIC_SCRIPTS = ("callcenter/db/migrations/env.py", "callcenter/db/migrations/versions/")
HELP_TIMEOUT_S = 30.0  # --help only imports; a service that started would never return


@dataclass(frozen=True)
class Installed:
    wheel: Path
    python: Path
    bin: Path
    workdir: Path

    def run(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        # outside the repository and with no PYTHONPATH: only what the wheel installed is importable
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("CC_", "PYTHON"))}
        return subprocess.run(args, cwd=self.workdir, env={**clean, **env}, capture_output=True, text=True,
                              timeout=timeout)


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    return [name for name in out.decode().split("\0") if name]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no tracked files to export")
    work = tmp_path_factory.mktemp("wheel")
    export = work / "export"
    for name in tracked_files():
        src = ROOT / name
        if src.is_file():  # tracked but deleted in the working tree: not part of the export
            (export / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, export / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--wheel-dir", str(work / "dist"), str(export)],
                   check=True, capture_output=True)
    [wheel] = (work / "dist").glob("callcenter-*.whl")
    venv = work / "venv"
    # no pip inside the scratch venv: the test's own pip installs into it (quicker than ensurepip)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([*pip, "--python", str(python), "install", "-q", f"{wheel}[{SERVICE_EXTRAS}]"],
                   check=True, capture_output=True)
    yield Installed(wheel=wheel, python=python, bin=venv / "bin", workdir=work)


def wheel_names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def wheel_modules(wheel: Path) -> list[str]:
    """Dotted names of every module in the wheel's packages, Alembic scripts aside."""
    modules = []
    for name in wheel_names(wheel):
        if not name.endswith(".py") or ".dist-info/" in name or name.startswith(ALEMBIC_SCRIPTS):
            continue
        dotted = name.removesuffix(".py").replace("/", ".")
        modules.append(dotted.removesuffix(".__init__"))
    return sorted(modules)


def test_the_wheel_holds_every_tracked_module_and_no_dev_tooling(installed: Installed) -> None:
    names = set(wheel_names(installed.wheel))
    roots = ["src/", *(f"services/{d.name}/" for d in sorted((ROOT / "services").iterdir()) if d.is_dir())]
    expected = {name.removeprefix(root) for name in tracked_files() for root in roots
                if name.startswith(root) and name.endswith((".py", ".lua", ".mako")) and (ROOT / name).is_file()}
    assert expected, "no tracked sources found"
    assert expected - names == set(), "tracked files missing from the wheel"
    assert not [n for n in names if n.startswith("callcenter_dev/") or "/testing/" in n or n.endswith("/demo.py")]


def test_installed_with_the_service_extras_only(installed: Installed) -> None:
    probe = ("import importlib.util as u; "
             "print(*[m for m in ('pytest', 'hypothesis', 'callcenter_dev', 'ruff', 'mypy') if u.find_spec(m)])")
    result = installed.run(str(installed.python), "-c", probe)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [], "test or dev tooling installed by the service extras"


def test_every_module_of_the_wheel_imports(installed: Installed) -> None:
    modules = wheel_modules(installed.wheel)
    assert {"callcenter.bus", "callcenter_api.routes.agents", "callcenter_sip_edge.main",
            "callcenter_dispatcher.main", "callcenter_cdr_writer.main"} <= set(modules)
    script = ("import importlib, sys\n"
              "failed = []\n"
              "for name in sys.argv[1:]:\n"
              "    try:\n"
              "        module = importlib.import_module(name)\n"
              "    except Exception as exc:\n"
              "        failed.append(f'{name}: {exc!r}')\n"
              "    else:\n"
              "        assert 'site-packages' in (module.__file__ or ''), module.__file__\n"
              "print('\\n'.join(failed))\n"
              "sys.exit(1 if failed else 0)\n")
    result = installed.run(str(installed.python), "-c", script, *modules)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_migrations_run_from_the_wheel(installed: Installed) -> None:
    db = installed.workdir / "migrated.sqlite3"
    script = ("import sys; from sqlalchemy import inspect\n"
              "from callcenter.db.engine import make_engine, upgrade\n"
              "engine = make_engine(sys.argv[1]); upgrade(engine)\n"
              "print(*sorted(inspect(engine).get_table_names()))\n")
    result = installed.run(str(installed.python), "-c", script, f"sqlite:///{db}")
    assert result.returncode == 0, result.stderr
    assert "cdrs" in result.stdout.split()


def console_scripts(wheel: Path) -> dict[str, str]:
    with zipfile.ZipFile(wheel) as zf:
        [entry_points] = [n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")]
        parser = configparser.ConfigParser()
        parser.read_string(zf.read(entry_points).decode())
    return dict(parser["console_scripts"])


def held_ports() -> tuple[list[socket.socket], dict[str, str]]:
    """Sockets holding a TCP and a UDP loopback port, and the CC_* settings pointing the services
    at them: a service that started would fail to bind (or to reach Redis) instead of printing
    its usage."""
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    tcp_port, udp_port = str(tcp.getsockname()[1]), str(udp.getsockname()[1])
    env = {"CC_HEALTH_PORT": tcp_port, "CC_API_HOST": "127.0.0.1", "CC_API_PORT": tcp_port,
           "CC_SIP_HOST": "127.0.0.1", "CC_SIP_PORT": udp_port,
           "CC_REDIS_URL": f"redis://127.0.0.1:{tcp_port}/0", "CC_DATABASE_URL": "sqlite:///never.sqlite3"}
    return [tcp, udp], env


def test_every_console_script_prints_its_usage_and_starts_nothing(installed: Installed) -> None:
    scripts = console_scripts(installed.wheel)
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == declared
    sockets, env = held_ports()
    try:
        for name in scripts:
            # a service that started would not return: subprocess.TimeoutExpired fails the test
            result = installed.run(str(installed.bin / name), "--help", timeout=HELP_TIMEOUT_S, **env)
            assert result.returncode == 0, f"{name} --help: {result.stdout}{result.stderr}"
            if name in CLIENTS:  # a client of the api (Click's usage line), no service settings
                assert result.stdout.startswith(f"Usage: {name}"), result.stdout
                assert CLIENTS[name] in result.stdout, result.stdout
            else:
                assert result.stdout.startswith(f"usage: {name}"), result.stdout
                assert "CC_REDIS_URL" in result.stdout and "CC_*" in result.stdout, result.stdout
            assert result.stderr == "", f"{name} --help logged: {result.stderr}"
        assert not (installed.workdir / "never.sqlite3").exists(), "a service opened its database"
    finally:
        for sock in sockets:
            sock.close()
