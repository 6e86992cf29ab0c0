"""The code base stays formatted and lint-clean (ruff, configured in pyproject)."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
_BESIDE = pathlib.Path(sys.executable).parent / "ruff"
RUFF = str(_BESIDE) if _BESIDE.exists() else (shutil.which("ruff") or str(_BESIDE))


@pytest.mark.skipif(not pathlib.Path(RUFF).exists(), reason="ruff is not installed")
@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_ruff(command):
    result = subprocess.run(
        [RUFF, *command, "."], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
