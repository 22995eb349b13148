"""bioimageio.core's own test of a package, run where this tool cannot be imported.

That is how the bioimage.io checks, ilastik or a colleague's machine meet a package: with
bioimageio.core, torch and onnxruntime, without unetile. `check_without_unetile` runs this
file as a script in a fresh interpreter (``python -I``: no PYTHONPATH, no user site, not the
current folder) with a finder first in ``sys.meta_path`` that refuses ``unetile`` (and
``unet``, its old name), whatever installed it (an editable install's finder included).

`run_without_unetile` does the same for the architecture file alone, loaded as a plain file
(importlib's basic recipe, no ``sys.modules`` entry, SciPy refused too): what any consumer
that is not bioimageio.core may do with it.

Run as a script it imports nothing of this package: ``python -I portable_check.py PACKAGE``
prints one JSON line ``{"status": ..., "checks": {name: [status, error...]}}``;
``python -I portable_check.py --forward FOLDER`` runs the architecture file in FOLDER.
"""

from __future__ import annotations

import importlib.abc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

REFUSED = ("unetile", "unet")
TIMEOUT_S = 900  # a hang in a consumer must not hang the caller


def check_without_unetile(package: str | Path) -> tuple[str, dict[str, list[str]]]:
    """(bioimageio.core's overall status, {check name: [status, error messages...]}) for
    ``package``, tested in a subprocess that cannot import this tool."""
    result = json.loads(_run_isolated(str(Path(package).resolve())).strip().splitlines()[-1])
    return result["status"], result["checks"]


def run_without_unetile(architecture: Path, kwargs: dict, state: dict, batch: torch.Tensor) -> torch.Tensor:
    """``PackagedNet(**kwargs)`` from the ``architecture`` source file, holding ``state``,
    applied to ``batch`` (N, C, H, W) in a subprocess that cannot import unetile or SciPy."""
    import shutil
    import tempfile

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copy(architecture, folder / "architecture.py")
        (folder / "kwargs.json").write_text(json.dumps(kwargs))
        torch.save({"state": state, "batch": batch}, folder / "inputs.pt")
        _run_isolated("--forward", str(folder))
        return torch.load(folder / "output.pt", weights_only=True)


def _run_isolated(*args: str) -> str:
    """This file as a script in ``python -I`` -> its standard output."""
    try:
        done = subprocess.run([sys.executable, "-I", __file__, *args], capture_output=True, text=True,
                              env={**os.environ, "TQDM_DISABLE": "1"}, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"the isolated check did not finish in {TIMEOUT_S} s:\n{(e.stderr or b'')[-3000:]!r}") from e
    if done.returncode != 0:
        raise RuntimeError(f"the isolated check failed to run:\n{done.stderr[-3000:]}")
    return done.stdout


class _Refuse(importlib.abc.MetaPathFinder):
    """Makes ``import NAME`` fail for ``names`` as it does where they are not installed."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r} (refused: testing without unetile)")
        return None


def _refuse(*names: str) -> None:
    """From now on ``import NAME`` fails for ``names`` (and this tool's), as where they are absent."""
    sys.meta_path.insert(0, _Refuse((*REFUSED, *names)))
    try:
        import unetile  # noqa: F401
    except ModuleNotFoundError:
        return
    sys.exit("unetile is still importable; the check would prove nothing")


def _forward(folder: Path) -> None:
    """Load folder/architecture.py by importlib's basic recipe and run it on folder/inputs.pt."""
    import importlib.util

    _refuse("scipy")
    import torch

    spec = importlib.util.spec_from_file_location("architecture", folder / "architecture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # deliberately not registered in sys.modules
    inputs = torch.load(folder / "inputs.pt", weights_only=True)
    net = module.PackagedNet(**json.loads((folder / "kwargs.json").read_text()))
    net.load_state_dict(inputs["state"])
    with torch.no_grad():
        torch.save(net.eval()(inputs["batch"]), folder / "output.pt")


def _main(package: str) -> None:
    _refuse()
    from bioimageio.core import test_model

    summary = test_model(package)
    checks = {d.name: [d.status, *(e.msg for e in d.errors)] for d in summary.details}
    print(json.dumps({"status": summary.status, "checks": checks}))


if __name__ == "__main__":
    _forward(Path(sys.argv[2])) if sys.argv[1] == "--forward" else _main(sys.argv[1])
