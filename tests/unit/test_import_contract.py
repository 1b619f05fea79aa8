"""The import contract (pyproject `[tool.importlinter]`) holds, and it would catch a breach.

`lint-imports` is run on the tree as it is, then on a scratch copy of the source roots into which
one forbidden import was written: a service importing another service, and the core importing a
service. The copy comes first on PYTHONPATH, so it is what the linter analyses.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROOTS = ["src", "services/sip-edge", "services/dispatcher", "services/cdr-writer", "services/api"]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(pythonpath: list[Path] | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", str(ROOT / "pyproject.toml")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def _copy_with(tmp_path: Path, module: str, line: str) -> list[Path]:
    paths = []
    for root in ROOTS:
        dest = tmp_path / root
        shutil.copytree(ROOT / root, dest, ignore=shutil.ignore_patterns("__pycache__"))
        paths.append(dest)
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}\n")
    return paths


def test_the_tree_keeps_the_contract() -> None:
    result = _lint()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("services/dispatcher/callcenter_dispatcher/handler.py", "import callcenter_api.schemas  # noqa",
     "No service imports another service"),
    ("src/callcenter/settings.py", "import callcenter_sip_edge.guard  # noqa", "The core imports no service"),
])
def test_a_forbidden_import_breaks_the_contract(tmp_path: Path, module: str, line: str, contract: str) -> None:
    result = _lint(_copy_with(tmp_path, module, line))
    assert result.returncode != 0
    assert f"{contract} BROKEN" in result.stdout
