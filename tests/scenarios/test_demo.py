"""The README's demo command runs end to end (its Python part; scripts/demo.sh adds the installs)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_replicates_and_checks_every_version():
    result = subprocess.run([sys.executable, "-m", "devtools.demo"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: westeu and seasia read the same rows as eastus at every version" in result.stdout
    assert "seasia=v8 (healthy)" in result.stdout
