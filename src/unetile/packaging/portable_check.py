"""bioimageio.core's own test of a package, run where this tool cannot be imported.

That is how the bioimage.io checks, ilastik or a colleague's machine meet a package: with
bioimageio.core, torch and onnxruntime, without unetile. `check_without_unetile` runs this
file as a script in a fresh interpreter (``python -I``: no PYTHONPATH, no user site, not the
current folder) with a finder first in ``sys.meta_path`` that refuses ``unetile`` (and
``unet``, its old name), whatever installed it (an editable install's finder included).

Run as a script it imports nothing of this package: ``python -I portable_check.py PACKAGE``
prints one JSON line ``{"status": ..., "checks": {name: [status, error...]}}``.
"""

from __future__ import annotations

import importlib.abc
import json
import os
import subprocess
import sys
from pathlib import Path

REFUSED = ("unetile", "unet")


def check_without_unetile(package: str | Path) -> tuple[str, dict[str, list[str]]]:
    """(bioimageio.core's overall status, {check name: [status, error messages...]}) for
    ``package``, tested in a subprocess that cannot import this tool."""
    done = subprocess.run([sys.executable, "-I", __file__, str(Path(package).resolve())], capture_output=True,
                          text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"the isolated bioimageio.core test failed to run:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["status"], result["checks"]


class _Refuse(importlib.abc.MetaPathFinder):
    """Makes ``import unetile`` fail as it does where the tool is not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in REFUSED:
            raise ModuleNotFoundError(f"No module named {name!r} (refused: testing without unetile)")
        return None


def _main(package: str) -> None:
    sys.meta_path.insert(0, _Refuse())
    try:
        import unetile  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        sys.exit("unetile is still importable; the test would prove nothing")
    from bioimageio.core import test_model

    summary = test_model(package)
    checks = {d.name: [d.status, *(e.msg for e in d.errors)] for d in summary.details}
    print(json.dumps({"status": summary.status, "checks": checks}))


if __name__ == "__main__":
    _main(sys.argv[1])
