"""The linter's rules (pyproject.toml [tool.ruff]) hold on the package, the tests, the benchmarks and the scripts."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ruff_is_clean():
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "napari_ssl", "tests", "benchmarks", "scripts"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-1000:]
