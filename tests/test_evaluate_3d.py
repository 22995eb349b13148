"""`unetile evaluate` on volumes (issue 34, item 7): 3D objects, per volume and pooled, from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from unetile.cli import main
from unetile.errors import UserInputError
from unetile.evaluation.volumes import is_volume_file, resolve_dims

IOUS = 10  # IoU thresholds 0.5, 0.55, ..., 0.95


def _volume_a() -> tuple[np.ndarray, np.ndarray]:
    """Truth: objects 1 and 2 stacked in z (touching), object 3 apart. Prediction (float map): one
    blob over 1 and 2, a column wider (3D IoU with each 64 / 192 = 1/3; per plane 16 / 24 = 2/3),
    and object 3 exactly."""
    truth = np.zeros((8, 16, 16), np.uint16)
    truth[0:4, 2:6, 2:6] = 1
    truth[4:8, 2:6, 2:6] = 2
    truth[2:6, 10:14, 10:14] = 3
    pred = np.zeros(truth.shape, np.float32)
    pred[0:8, 2:6, 2:8] = 0.9
    pred[2:6, 10:14, 10:14] = 0.8
    return pred, truth


def _volume_b() -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((6, 12, 12), np.uint16)
    truth[1:5, 1:5, 1:5] = 1
    truth[1:5, 7:11, 7:11] = 2
    return np.where(truth > 0, 0.7, 0.1).astype(np.float32), truth


def _write(path: Path, array: np.ndarray, imagej: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if imagej:  # an ImageJ hyperstack, as Fiji and the PlantSeg volumes are
        tifffile.imwrite(path, array, imagej=True, metadata={"axes": "ZYX"})
    else:
        tifffile.imwrite(path, array, photometric="minisblack", metadata={"axes": "ZYX"})
    return path


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path]:
    for name, (pred, truth) in (("a", _volume_a()), ("b", _volume_b())):
        _write(tmp_path / "pred" / f"{name}.tif", pred, imagej=False)
        _write(tmp_path / "labels" / f"{name}.tif", truth, imagej=True)
    return tmp_path / "pred", tmp_path / "labels"


def test_volumes_are_scored_in_3d(folders, tmp_path, capsys):
    pred, labels = folders
    assert resolve_dims(labels) == 3
    out = tmp_path / "m.json"
    main(["evaluate", "--pred", str(pred), "--labels", str(labels), "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["dims"] == 3 and [v["name"] for v in result["volumes"]] == ["a", "b"]
    a, b = result["objects"]["volumes"]
    # a: 3 true objects, 2 predicted; only object 3 matches (IoU 1), at every IoU threshold.
    assert (a["n_true"], a["n_pred"]) == (3, 2)
    assert [t["tp"] for t in a["at"]] == [1] * IOUS
    assert a["ap_50"] == pytest.approx(1 / 4) and a["mean_ap"] == pytest.approx(1 / 4)
    assert a["f1_50"] == pytest.approx(2 / 5) and a["merged"] == 2  # true objects merged
    assert b["ap_50"] == 1.0 and b["mean_ap"] == 1.0
    pooled = result["objects"]["pooled"]  # TP 1 + 2, FP 1, FN 2
    assert pooled["ap_50"] == pytest.approx(3 / 6) and pooled["mean_ap"] == pytest.approx(3 / 6)
    assert pooled["f1_50"] == pytest.approx(6 / 9)
    # a's foreground: 256 predicted voxels, 192 true, 192 shared.
    assert result["volumes"][0]["dice"] == pytest.approx(2 * 192 / (256 + 192))
    assert result["volumes"][0]["iou"] == pytest.approx(192 / 256)
    assert result["volumes"][1]["dice"] == 1.0
    assert result["mean"]["dice"] == pytest.approx((2 * 192 / 448 + 1) / 2)
    # VOI scores (1 = perfect): b is exact; a merges two objects but splits none.
    assert result["volumes"][1]["voi_split"] == 1.0 and result["volumes"][1]["voi_merge"] == 1.0
    assert result["volumes"][0]["voi_split"] == 1.0 and result["volumes"][0]["voi_merge"] < 0.6
    table = capsys.readouterr().out
    assert "VOI split" in table and "pooled" in table and "0.2500" in table
    # The true objects by size (balls of their volume): a's two merged ones are not found.
    by_size = result["objects"]["by_size"]["rows"]
    assert sum(r["cells"] for r in by_size) == pooled["n_true"] and sum(r["merged"] for r in by_size) == 2
    assert sum(r["found"] for r in by_size) == 3 and "true cells by size (diameter of the ball" in table


def test_dims_2_scores_the_planes(folders, tmp_path):
    """The same files plane by plane: 14 planes; the blob now matches its object in each plane
    at IoU 2/3 (AP 1 up to IoU 0.65), so 2D scores what 3D sees as a merge as a success."""
    pred, labels = folders
    out = tmp_path / "m2.json"
    main(["evaluate", "--pred", str(pred), "--labels", str(labels), "--dims", "2", "--json", str(out)])
    result = json.loads(out.read_text())
    assert [e["name"] for e in result["images"]][:2] == ["a[0]", "a[1]"] and len(result["images"]) == 8 + 6
    per_plane = result["cells"]["images"]
    assert per_plane[0]["mean_ap"] == pytest.approx(0.4)  # a[0]: 4 of 10 IoU thresholds
    assert per_plane[2]["mean_ap"] == pytest.approx((4 + 6 / 3) / 10)  # a[2]: object 3 matches at all
    assert per_plane[0]["ap_50"] == 1.0 and per_plane[0]["n_true"] == 1 and per_plane[9]["n_true"] == 2
    assert result["cells"]["pooled"]["ap_50"] == 1.0
    # Pooled over the planes, above IoU 0.65: TP 4 (object 3) + 8 (b), FP 8 and FN 8 (the blob in a's planes).
    assert result["cells"]["pooled"]["mean_ap"] == pytest.approx((4 + 6 * 12 / 28) / 10)


def test_label_volume_predictions_and_single_files(tmp_path):
    pred, truth = _volume_a()
    ids = np.zeros(truth.shape, np.uint32)
    ids[pred == np.float32(0.9)] = 5
    ids[pred == np.float32(0.8)] = 7
    p = tmp_path / "ids.tif"
    tifffile.imwrite(p, ids, photometric="minisblack", metadata={"axes": "ZYX"})
    t = _write(tmp_path / "truth.tif", truth, imagej=True)
    result = main_json(tmp_path, ["--pred", str(p), "--labels", str(t), "--threshold", "0.95"])
    a = result["objects"]["volumes"][0]
    assert (a["n_true"], a["n_pred"], a["ap_50"]) == (3, 2, pytest.approx(1 / 4))  # ids ignore the threshold
    assert result["volumes"][0]["name"] == "ids"


def main_json(tmp_path: Path, args: list[str]) -> dict:
    out = tmp_path / "r.json"
    main(["evaluate", *args, "--json", str(out)])
    return json.loads(out.read_text())


def test_two_class_map_uses_channel_1_and_report(tmp_path):
    pred, truth = _volume_b()
    two = np.stack([1 - pred, pred])  # (C, Z, Y, X) as a two-class net's map
    p = tmp_path / "p" / "b.tif"
    p.parent.mkdir()
    tifffile.imwrite(p, two, photometric="minisblack", metadata={"axes": "CZYX"})
    _write(tmp_path / "t" / "b.tif", truth, imagej=True)
    _write(tmp_path / "i" / "b.tif", (truth * 100).astype(np.uint8), imagej=True)
    result = main_json(tmp_path, ["--pred", str(p.parent), "--labels", str(tmp_path / "t"),
                                  "--report", str(tmp_path / "rep"), "--images", str(tmp_path / "i")])
    assert result["objects"]["pooled"]["mean_ap"] == 1.0
    page = (tmp_path / "rep" / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 5 and "z = 3" in page and "<td>1.0000</td>" in page
    assert "3D cells at IoU 0.5 in the volume: 2 matched, 0 true cells unmatched" in page and "plane y = 6" in page
    assert "True cells by size (diameter of the ball of their volume" in page


def test_the_cells_overlay_of_a_volume_shows_the_3d_matching_on_each_plane():
    """In plane z = 4 the blob over objects 1 and 2 covers object 2 with IoU 2/3, a match in 2D; in 3D
    it holds both at IoU 1/3, so the plane shows object 2 unmatched (filled) and the blob's outline as
    an unmatched cell. Object 3, matched in 3D, is outlined as matched."""
    from unetile.evaluation import metrics
    from unetile.evaluation.report import cell_classes, matched_cells, outline_cells

    pred, truth = _volume_a()
    true_ids, pred_ids = metrics.truth_labels(truth), metrics.prediction_labels(pred)
    matched = matched_cells(true_ids, pred_ids)
    assert matched[0].tolist() == [3] and len(matched[1]) == 1
    plane = outline_cells(true_ids[4], pred_ids[4], *matched)
    assert plane[3, 3] == 2 and plane[2, 2] == 3 and plane[2, 7] == 3  # object 2 missed, the blob unmatched
    assert plane[10, 10] == 1 and plane[12, 12] == 0  # object 3: outlined as matched, inside untouched
    planar = cell_classes(pred[4], truth[4])  # the same plane matched on its own: object 2 is found
    assert planar[3, 3] == 0 and planar[2, 2] == 1


def test_the_volume_report_draws_z_at_its_physical_length(tmp_path):
    from unetile.evaluation.volume_report import _z_stretch

    assert _z_stretch([2.0, 0.5, 0.5]) == 4 and _z_stretch(None) == 1 and _z_stretch([0.2, 0.5, 0.5]) == 1
    pred, truth = _volume_a()
    _write(tmp_path / "p" / "a.tif", pred, imagej=True)
    (tmp_path / "t").mkdir()
    tifffile.imwrite(tmp_path / "t" / "a.tif", truth, imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "ZYX", "spacing": 1.5, "unit": "um"})  # voxels 1.5 x 0.5 x 0.5 um
    main(["evaluate", "--pred", str(tmp_path / "p"), "--labels", str(tmp_path / "t"), "--report", str(tmp_path / "r")])
    page = (tmp_path / "r" / "index.html").read_text()
    assert "1 matched, 2 true cells unmatched, 1 predicted cells unmatched; 2 merged" in page
    assert "each plane drawn 3 px high" in page


def test_isbi_like_stacks_stay_2d(tmp_path):
    """Plain multi-page stacks and ImageJ stacks without hyperstack or z spacing are planes."""
    plain = tmp_path / "train-labels.tif"
    tifffile.imwrite(plain, np.zeros((4, 8, 8), np.uint8))
    stack = tmp_path / "ij.tif"
    tifffile.imwrite(stack, np.zeros((4, 8, 8), np.uint8), description="ImageJ=1.46r\nimages=4\nslices=4\n")
    assert not is_volume_file(plain) and not is_volume_file(stack)
    assert resolve_dims(plain) == 2 and resolve_dims(stack) == 2 and resolve_dims(plain, "3") == 3
    hyper = _write(tmp_path / "h.tif", np.zeros((4, 8, 8), np.uint8), imagej=True)
    spaced = tmp_path / "s.tif"
    tifffile.imwrite(spaced, np.zeros((4, 8, 8), np.uint8), imagej=True, resolution=(4.0, 4.0),
                     metadata={"spacing": 0.5, "unit": "um"})
    assert is_volume_file(hyper) and is_volume_file(spaced)


def test_mixed_or_mismatched_inputs_are_one_line_errors(folders, tmp_path, capsys):
    pred, labels = folders
    tifffile.imwrite(labels / "c.tif", np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(UserInputError, match="volumes .* and 2D images"):
        resolve_dims(labels)
    (labels / "c.tif").unlink()
    _write(tmp_path / "short" / "a.tif", np.zeros((7, 16, 16), np.float32), imagej=False)
    _write(tmp_path / "short" / "b.tif", np.zeros((6, 12, 12), np.float32), imagej=False)
    assert main(["evaluate", "--pred", str(tmp_path / "short"), "--labels", str(labels)]) == 2
    assert "a.tif: the prediction volume is 7x16x16 (z, y, x) but the label" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--pred", str(pred), "--labels", str(labels), "--dims", "4"])
