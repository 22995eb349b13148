"""The architecture a BioImage.IO package carries: `PackagedNet` built for a checkpoint, and
its source as one self-contained Python file.

A package's ``pytorch_state_dict`` weights need the network's code. Imported from this
library (spec 0.5 ``ArchitectureFromLibraryDescr``), the package fails wherever this tool is
not installed: the bioimage.io checks, ilastik, a colleague's machine. So the package holds
the code itself (``ArchitectureFromFileDescr``, with its sha256): `architecture_source`
joins the portable modules (`PORTABLE`: ``nn/geometry.py``, ``nn/model.py``,
``packaging/packaged_net.py``, which import only the standard library, torch and names from
each other) into one file, dropping the imports between them. The file is generated from
the very modules `unetile` runs, so there is one copy of the network to maintain; a test
runs bioimageio.core on the package where this library cannot be imported.

What the portable code cannot compute without SciPy or the tiling rules is computed here and
passed in as numbers: the shift kernels and the halo.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
from scipy import ndimage

from .. import __version__
from ..errors import UserInputError
from ..nn.model import UNet
from .packaged_net import PackagedNet
from ..inference.layout import same_padding_margin

SRC = Path(__file__).resolve().parents[1]
PORTABLE = ("nn/geometry.py", "nn/model.py", "packaging/packaged_net.py")  # in dependency order
SHIFT_TAPS = 12  # px either side of the spline-shift kernel
FILE_NAME = "unetile_architecture.py"


def shift_kernel(offset: float, taps: int = SHIFT_TAPS) -> list[float]:
    """(2 taps + 1) weights w with ``shifted[i] = sum_j w[j] x[i + j - taps]``: the cubic-spline
    shift by ``offset`` px (``out[i] = x[i - offset]``), from SciPy's own impulse response.

    Its response decays by |sqrt(3) - 2| = 0.27 per px, so 12 taps a side reproduce
    ``registration.shift_image`` (mirror extrapolation) to ~1e-7.
    """
    n = 8 * taps + 1
    weights = np.empty(2 * taps + 1)
    for j in range(2 * taps + 1):  # the response at the centre to a unit impulse at centre + j - taps
        impulse = np.zeros(n)
        impulse[n // 2 + j - taps] = 1.0
        weights[j] = ndimage.shift(impulse, offset, order=3, mode="mirror")[n // 2]
    return [float(w) for w in weights.astype(np.float32)]


def architecture_kwargs(model: UNet, metadata: dict) -> dict:
    """The plain-value arguments of `PackagedNet` for a checkpoint's ``model`` and ``metadata``
    (as they go into the package's rdf.yaml). A 3D net's halo is one number per axis (z, y, x)."""
    config = model.config
    if config.spatial_dims == 3:
        if any(float(s) != 0.0 for s in metadata.get("input_shift", ())):
            raise UserInputError("a 3D model with a sub-pixel input shift (input_shift): packages shift 2D "
                                 "images only")
        halos = [_packaged_halo(model, axis, 0) for axis in (-3, -2, -1)]
        return {"config": config.to_dict(), "threshold": float(metadata.get("threshold", 0.5)), "halo": halos,
                "shift_kernels": None}
    offset = [float(s) for s in metadata.get("input_shift", (0.0, 0.0))]
    shifted = any(s != 0.0 for s in offset)
    taps = SHIFT_TAPS if shifted else 0
    return {"config": config.to_dict(), "threshold": float(metadata.get("threshold", 0.5)),
            "halo": _packaged_halo(model, -1, taps), "shift_kernels": [shift_kernel(s) for s in offset] if shifted
            else None}


def _packaged_halo(model: UNet, axis: int, taps: int) -> int:
    """px of each packaged output side without full context along ``axis``: a valid net's
    halo (plus the shift kernel's ``taps``), or a same net's margin rounded to the axis' grid."""
    halo = model.axis_halo(axis) + taps
    return int(halo if model.config.padding == "valid" else same_padding_margin(halo, model.grid(axis)))


def packaged_net(model: UNet, metadata: dict) -> PackagedNet:
    """``model`` inside a `PackagedNet` that does what `unetile predict` does around it (eval mode)."""
    packaged = PackagedNet(**architecture_kwargs(model, metadata))
    packaged.net.load_state_dict(model.state_dict())
    return packaged.eval()


def architecture_source() -> str:
    """The portable modules joined into one self-contained module defining `PackagedNet`."""
    external, bodies, defined = set(), [], set()
    for relative in PORTABLE:
        text = (SRC / relative).read_text()
        imports, body = _split_imports(text, relative, defined)
        external |= imports
        names = _top_level_names(body)
        if names & defined:
            raise RuntimeError(f"{relative} redefines {sorted(names & defined)}: the joined file would clash")
        defined |= names
        bodies.append(f"# ---- from unetile/{relative} " + "-" * max(0, 70 - len(relative)) + "\n\n" + body.strip())
    header = (f'"""The U-Net of a model package exported by unetile {__version__}: `PackagedNet` (the network, '
              "the\nlabels' sub-pixel shift, probabilities, calibration). Generated from the modules named below;\n"
              'it needs only torch. Do not edit: rdf.yaml holds its sha256."""\n')
    # No `from __future__ import annotations`: with it, a dataclass needs its module in
    # sys.modules, which importlib's plain recipe for loading a file does not do.
    imports = sorted((i for i in external if not i.startswith("from __future__")), key=lambda i: (i.startswith("from"), i))
    source = "\n".join([header, *imports, "", "", "\n\n\n".join(bodies), ""])
    _check_self_contained(source)
    return source


def _split_imports(text: str, relative: str, defined: set[str]) -> tuple[set[str], str]:
    """(the module's imports of other libraries, its code without imports and docstring);
    imports from the other portable modules are dropped (their names must be defined already;
    an ``as`` alias becomes an assignment)."""
    tree = ast.parse(text)
    lines = text.splitlines()
    drop, imports, aliases = set(), set(), []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            drop.update(range(node.lineno - 1, node.end_lineno))
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                for alias in node.names:
                    if alias.name not in defined:
                        raise RuntimeError(f"{relative} imports {alias.name} from outside the portable modules")
                    if alias.asname:
                        aliases.append(f"{alias.asname} = {alias.name}")
            else:
                imports.add(ast.get_source_segment(text, node))
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and node is tree.body[0]:
            drop.update(range(node.lineno - 1, node.end_lineno))  # the module docstring
    body = "\n".join(line for i, line in enumerate(lines) if i not in drop)
    return imports, "\n".join(aliases + [body]) if aliases else body


def _top_level_names(body: str) -> set[str]:
    names = set()
    for node in ast.parse(body).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def _check_self_contained(source: str) -> None:
    """The joined file may import only the standard library and torch."""
    allowed = {"dataclasses", "functools", "math", "typing", "torch"}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            roots = {(node.module or "").split(".")[0]} if node.level == 0 else {"."}
        elif isinstance(node, ast.Import):
            roots = {alias.name.split(".")[0] for alias in node.names}
        else:
            continue
        if not roots <= allowed:
            raise RuntimeError(f"the package's architecture file would import {sorted(roots - allowed)}")

