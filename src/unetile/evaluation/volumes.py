"""`unetile evaluate` on volumes: one (Z, Y, X) volume per TIFF file, scored in 3D.

A file holds a volume when its TIFF series has a Z axis (ImageJ hyperstacks and OME-TIFFs
written with axes ``"ZYX"``) or carries a z voxel size (`io.voxel_size`); plain multi-page
stacks (the ISBI 2012 layout) stay piles of 2D planes. ``--dims auto`` decides from the label
files (`resolve_dims`); ``--dims 3`` reads every file as a volume (its pages are z), ``--dims 2``
scores the planes of volumes one by one, as `evaluate` does for stacks.

Pairing: folder vs folder by file name without its suffix; otherwise the files in order (a
file each, or folders of equal counts). Predictions are read as in 2D (probability maps
thresholded at ``--threshold``, ``uint8`` maps, masks, label volumes of ids); a two-channel map
(C, Z, Y, X) is scored on channel 1. The metrics are `metrics.evaluate_volumes`' (3D objects
matched by IoU, VOI split / merge, adapted Rand, Dice / IoU), per volume and pooled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from ..errors import UserInputError, reading
from ..io import TIFF_SUFFIXES, list_images, read_image, voxel_size
from . import metrics
from .evaluate import check_values, match_stems, to_plane, write_json
from .tables import CELL_COLUMNS, aligned, cell_values, format_size_table

__all__ = ["DIMS", "VolumePairs", "is_volume_file", "resolve_dims", "read_volume", "load_volume_pairs",
           "format_volume_table", "run_evaluate_volumes"]

#: Choices of ``--dims``.
DIMS = ("auto", "2", "3")
#: Voxel metrics of the volume table: (key in `evaluate_volumes`' entries, heading).
_VOXEL_COLUMNS = (("voi_split", "VOI split"), ("voi_merge", "VOI merge"), ("adapted_rand_error", "ARand err"),
                  ("dice", "Dice"), ("iou", "IoU"))


def is_volume_file(path: str | Path) -> bool:
    """True where ``path`` is a TIFF whose first series has a Z axis or that carries a z voxel size.

    ImageJ writes ``slices=N`` (read as Z) into every stack it saves; a plain ImageJ stack (not a
    hyperstack, no z spacing: the ISBI 2012 layout) is a pile of planes, not a volume."""
    path = Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return False
    with reading(path, "cannot read the TIFF"), tifffile.TiffFile(path) as tif:
        imagej = tif.imagej_metadata
        plain_imagej_stack = imagej is not None and not imagej.get("hyperstack") and "spacing" not in imagej
        if "Z" in tif.series[0].axes and not plain_imagej_stack:
            return True
    return voxel_size(path) is not None


def resolve_dims(labels: str | Path, dims: str = "auto") -> int:
    """2 (planes) or 3 (volumes): ``dims`` as given, or for "auto" what the label files hold.
    Label files of both kinds under "auto" are a `UserInputError`."""
    if dims not in DIMS:
        raise UserInputError(f"--dims {dims}: choose one of {', '.join(DIMS)}")
    if dims != "auto":
        return int(dims)
    files = list_images(labels)
    kinds = {f: is_volume_file(f) for f in files}
    if len(set(kinds.values())) > 1:
        volume = next(f for f, v in kinds.items() if v)
        image = next(f for f, v in kinds.items() if not v)
        raise UserInputError(f"{labels}: holds volumes ({volume.name}) and 2D images ({image.name}); "
                             "give --dims 3 or --dims 2")
    return 3 if kinds[files[0]] else 2


def read_volume(path: Path, role: str, keep_colour: bool = False) -> np.ndarray:
    """One file -> (Z, Y, X) in its stored dtype (a colour input image with ``keep_colour``: (3, Z, Y, X));
    a two-channel prediction gives its channel 1 (`evaluate.to_plane`)."""
    stack = read_image(path)  # (N, C, H, W): every non-channel axis (Z) folded into N
    return to_plane(path, np.moveaxis(stack, 1, 0), role, keep_colour)


@dataclass(frozen=True)
class VolumePairs:
    """Paired volumes (Z, Y, X), in the order of the prediction side, with each label file's
    voxel size (z, y, x) um (None where it does not say) and where each came from."""

    names: list[str]
    preds: list[np.ndarray]
    truths: list[np.ndarray]
    voxel_sizes: list[tuple[float, float, float] | None]
    pred_sources: list[str]
    truth_sources: list[str]


def _pair_files(a: Path, b: Path, a_role: str, b_role: str) -> list[tuple[str, Path, Path]]:
    """(name, a file, b file): folders by file stem, anything else in order (equal counts)."""
    a_files, b_files = list_images(a), list_images(b)
    if a.is_dir() and b.is_dir():
        return [(fa.stem, fa, fb) for fa, fb in match_stems(a_files, b_files, a, b, a_role, b_role)]
    if len(a_files) != len(b_files):
        raise UserInputError(f"{a}: {len(a_files)} {a_role} volumes but the {b_role} {b} has {len(b_files)}; "
                             "they are paired in order, so the counts must be equal")
    names_from_b = b.is_dir() and not a.is_dir()
    return [((fb if names_from_b else fa).stem, fa, fb) for fa, fb in zip(a_files, b_files)]


def _check_shapes(fa: Path, a: np.ndarray, fb: Path, b: np.ndarray, a_role: str, b_role: str) -> None:
    if a.shape[-3:] != b.shape[-3:]:
        raise UserInputError(f"{fa}: the {a_role} volume is {'x'.join(map(str, a.shape[-3:]))} (z, y, x) but the "
                             f"{b_role} {fb} is {'x'.join(map(str, b.shape[-3:]))}")


def load_volume_pairs(pred: str | Path, labels: str | Path) -> VolumePairs:
    """Read and pair predicted and true volumes (see the module docstring)."""
    pairs = _pair_files(Path(pred), Path(labels), "prediction", "label")
    preds, truths = [], []
    for _, fp, fl in pairs:
        p, t = read_volume(fp, "prediction"), read_volume(fl, "label")
        _check_shapes(fp, p, fl, t, "prediction", "label")
        check_values(p, str(fp), "prediction")
        check_values(t, str(fl), "label")
        preds.append(p)
        truths.append(t)
    return VolumePairs(names=[n for n, _, _ in pairs], preds=preds, truths=truths,
                       voxel_sizes=[voxel_size(fl) for _, _, fl in pairs],
                       pred_sources=[str(fp) for _, fp, _ in pairs], truth_sources=[str(fl) for _, _, fl in pairs])


def load_matching_volumes(images: str | Path, pred: str | Path) -> list[np.ndarray]:
    """Input volumes paired with the prediction side, in `load_volume_pairs` order: (Z, Y, X) grey
    or (3, Z, Y, X) colour, in their stored dtype."""
    out = []
    for _, fp, fi in _pair_files(Path(pred), Path(images), "prediction", "input image"):
        volume = read_volume(fi, "input image", keep_colour=True)
        _check_shapes(fi, volume, fp, read_volume(fp, "prediction"), "input image", "prediction")
        out.append(volume)
    return out


def evaluate_volume_pairs(pairs: VolumePairs, threshold: float = 0.5) -> dict:
    """`metrics.evaluate_volumes` of the pairs, with ``dims`` 3, the threshold and each volume's voxel size."""
    result = metrics.evaluate_volumes(pairs.preds, pairs.truths, threshold=threshold, names=pairs.names)
    for entry, voxel in zip(result["volumes"], pairs.voxel_sizes):
        entry["voxel_size_um"] = None if voxel is None else list(voxel)
    return {"dims": 3, "threshold": threshold, **result}


def volume_rows(result: dict) -> list[tuple[str, list[str]]]:
    """(name, formatted object and voxel scores) for each volume, then the pooled row."""
    objects = result["objects"]
    rows = []
    for entry, scores in zip(result["volumes"] + [result["mean"]], objects["volumes"] + [objects["pooled"]]):
        voxel = [f"{entry[k]:.4f}" for k, _ in _VOXEL_COLUMNS]
        rows.append((str(entry.get("name", "pooled")), cell_values(scores) + voxel))
    return rows


def volume_headings() -> list[str]:
    return [h for _, h in CELL_COLUMNS] + [h for _, h in _VOXEL_COLUMNS]


def format_volume_table(result: dict) -> str:
    """A fixed-width text table of an `evaluate_volume_pairs` result: a row per volume, then pooled."""
    text = aligned([("volume", volume_headings()), *volume_rows(result)])
    ts = result["objects"]["iou_thresholds"]
    rule = "-" * len(text[0])
    return "\n".join([
        f"3D objects matched one to one by IoU (AP = TP / (TP + FP + FN); mAP over IoU {ts[0]:g}-{ts[-1]:g}; "
        "PQ at 0.5); voxels above threshold "
        f"{result['threshold']:g} for maps", text[0], rule, *text[1:-1], rule, text[-1],
        "(VOI split / merge: information scores, 1 = no split / merge; pooled: object counts summed over the "
        "volumes, the voxel scores averaged)", "", format_size_table(result["objects"]["by_size"])])


def run_evaluate_volumes(pred: str | Path, labels: str | Path, threshold: float = 0.5,
                         json_path: str | Path | None = None, report_dir: str | Path | None = None,
                         images: str | Path | None = None) -> dict:
    """``unetile evaluate`` on volumes: evaluate, print the table, write the JSON and the HTML
    report (`volume_report.write_volume_report`) if asked. Returns the result dict."""
    pairs = load_volume_pairs(pred, labels)
    inputs = load_matching_volumes(images, pred) if images is not None else None
    result = evaluate_volume_pairs(pairs, threshold)
    print(format_volume_table(result))
    if json_path is not None:
        print(f"metrics written to {write_json(result, json_path)}")
    if report_dir is not None:
        from .volume_report import write_volume_report

        page = write_volume_report(result, pairs.preds, pairs.truths, inputs, Path(report_dir), threshold)
        print(f"report written to {page}")
    return result
