"""A peer's venv of its own (MONAI, Cellpose, StarDist are never our dependencies)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def ensure_venv(venv: Path, packages: list[str]) -> Path:
    """The venv's python, the venv created with ``packages`` first where it is missing
    (pin ``torch==2.13.0`` among them: an unpinned torch pulls a CUDA build of several GB)."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
    return python
