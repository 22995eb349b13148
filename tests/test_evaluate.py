"""Tests of unetile.evaluation.evaluate (file pairing, table, JSON) and unetile.evaluation.report (the HTML page)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage as ndi
from skimage.metrics import adapted_rand_error as skimage_are

from unetile import metrics
from unetile.errors import UserInputError
from unetile.evaluation.evaluate import (
    TABLE_COLUMNS,
    evaluate_paths,
    format_table,
    load_pairs,
    run_evaluate,
    write_json,
)
from unetile.evaluation.report import error_classes, write_report

H = W = 40
FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)


def make_truth(seed: int) -> np.ndarray:
    """Binary truth 0/255: a grid of cells separated by 1-2 px membranes, shifted by seed."""
    t = np.full((H, W), 255, np.uint8)
    off = seed % 5
    t[(np.arange(H) + off) % 10 < 2, :] = 0
    t[:, (np.arange(W) + 2 * off) % 13 < 1] = 0
    return t


def make_prob(truth: np.ndarray, seed: int) -> np.ndarray:
    """A noisy smooth probability map of the interior, never exactly 0.5."""
    rng = np.random.default_rng(seed)
    p = ndi.gaussian_filter(truth / 255.0, 1.0) + rng.normal(0, 0.25, truth.shape)
    p = np.clip(ndi.gaussian_filter(p, 0.7), 0, 1)
    p[np.abs(p - 0.5) < 1e-3] = 0.52
    return p


def png8(path: Path, p: np.ndarray) -> None:
    Image.fromarray(np.round(p * 255).astype(np.uint8)).save(path)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path, list[np.ndarray], list[np.ndarray]]:
    """pred/{a,b,c}.png (8-bit maps) and labels/{a.png, b.tif, c.png}; returns the float maps."""
    pred, labels = tmp_path / "pred", tmp_path / "labels"
    pred.mkdir()
    labels.mkdir()
    probs, truths = [], []
    for i, (stem, suffix) in enumerate([("a", ".png"), ("b", ".tif"), ("c", ".png")]):
        t = make_truth(i)
        p = make_prob(t, i)
        png8(pred / f"{stem}.png", p)
        if suffix == ".png":
            Image.fromarray(t).save(labels / f"{stem}{suffix}")
        else:
            tifffile.imwrite(labels / f"{stem}{suffix}", t)
        probs.append(p)
        truths.append(t)
    return pred, labels, probs, truths


# --------------------------------------------------------------------------------------
# Pairing
# --------------------------------------------------------------------------------------


def test_folders_are_matched_by_name_not_order(tmp_path: Path) -> None:
    pred, labels = tmp_path / "pred", tmp_path / "labels"
    pred.mkdir()
    labels.mkdir()
    # Labels in another format (.tif) and a stem that is a prefix of another; the two
    # slices differ, so a wrong pairing gives a pixel error.
    t0, t1 = make_truth(0), make_truth(3)
    png8(pred / "x.png", t0 / 255.0)
    png8(pred / "x-1.png", t1 / 255.0)
    tifffile.imwrite(labels / "x.tif", t0)
    Image.fromarray(t1).save(labels / "x-1.png")
    pairs = load_pairs(pred, labels)
    assert sorted(pairs.names) == ["x", "x-1"]
    for name, p, t in zip(pairs.names, pairs.preds, pairs.truths):
        assert np.array_equal(p > 127, t > 0), name
    result = evaluate_paths(pred, labels)
    assert {e["name"] for e in result["images"]} == {"x", "x-1"}
    assert all(e["pixel_error"] == 0.0 for e in result["images"])


def test_stack_vs_stack_and_folder_vs_stack(tmp_path: Path, folders) -> None:
    pred_dir, _, probs, truths = folders
    pred_stack = tmp_path / "pred.tif"
    truth_stack = tmp_path / "labels.tif"
    tifffile.imwrite(pred_stack, np.stack(probs).astype(np.float32), photometric="minisblack")
    tifffile.imwrite(truth_stack, np.stack(truths), photometric="minisblack")
    ss = evaluate_paths(pred_stack, truth_stack)
    assert [e["name"] for e in ss["images"]] == ["pred[0]", "pred[1]", "pred[2]"]
    want = [metrics.pixel_error(p.astype(np.float32), t) for p, t in zip(probs, truths)]
    assert [e["pixel_error"] for e in ss["images"]] == pytest.approx(want, abs=1e-12)
    # A folder against a stack: paired in sorted order, names from the folder.
    fs = evaluate_paths(pred_dir, truth_stack)
    assert [e["name"] for e in fs["images"]] == ["a", "b", "c"]
    assert fs["images"][2]["dice"] == pytest.approx(
        metrics.dice(np.round(probs[2] * 255).astype(np.uint8), truths[2])
    )


def test_missing_partner_names_the_file(folders) -> None:
    pred, labels, _, _ = folders
    (labels / "c.png").rename(labels / "zz.png")
    with pytest.raises(UserInputError) as e:
        evaluate_paths(pred, labels)
    assert str(pred / "c.png") in str(e.value)


def test_count_mismatch_names_both_paths(tmp_path: Path, folders) -> None:
    pred, _, _, truths = folders
    stack = tmp_path / "labels.tif"
    tifffile.imwrite(stack, np.stack(truths[:2]), photometric="minisblack")
    with pytest.raises(UserInputError) as e:
        evaluate_paths(pred, stack)
    msg = str(e.value)
    assert str(stack) in msg and str(pred) in msg and "3" in msg and "2" in msg


def test_shape_mismatch_names_the_file(folders) -> None:
    pred, labels, _, _ = folders
    Image.fromarray(np.zeros((H, W + 3), np.uint8)).save(labels / "a.png")
    with pytest.raises(UserInputError) as e:
        evaluate_paths(pred, labels)
    assert str(pred / "a.png") in str(e.value) and str(labels / "a.png") in str(e.value)


def test_bad_values_and_duplicate_stems_name_the_file(tmp_path: Path, folders) -> None:
    pred, labels, _, _ = folders
    tifffile.imwrite(pred / "b.tif", np.full((H, W), 2.0, np.float32))
    with pytest.raises(UserInputError) as e:
        evaluate_paths(pred, labels)
    assert "b.png" in str(e.value) and "b.tif" in str(e.value)  # two files named b
    (pred / "b.png").unlink()
    with pytest.raises(UserInputError) as e:
        evaluate_paths(pred, labels)
    assert str(pred / "b.tif") in str(e.value) and "[0, 1]" in str(e.value)


# --------------------------------------------------------------------------------------
# Values, JSON, table
# --------------------------------------------------------------------------------------


def test_png_maps_match_independent_pixel_error_and_skimage(folders) -> None:
    pred, labels, probs, truths = folders
    result = evaluate_paths(pred, labels, threshold=0.5)
    assert [e["name"] for e in result["images"]] == ["a", "b", "c"]
    for entry, p, t in zip(result["images"], probs, truths):
        fg = p > 0.5  # the float map: round(p * 255) / 255 must keep the same side of 0.5
        want_pe = np.mean(fg != (t > 0))
        want_are = skimage_are(
            ndi.label(t > 0, structure=FOUR)[0],
            ndi.label(fg, structure=FOUR)[0],
            ignore_labels=(0,),
        )[0]
        assert 0 < want_pe < 0.5 and 0 < want_are < 1  # the maps do have errors
        assert entry["pixel_error"] == pytest.approx(want_pe, abs=1e-6)
        assert entry["adapted_rand_error"] == pytest.approx(want_are, abs=1e-6)
    assert result["mean"]["pixel_error"] == pytest.approx(
        np.mean([e["pixel_error"] for e in result["images"]]), abs=1e-12
    )


def test_json_has_exactly_the_metrics_keys(tmp_path: Path, folders) -> None:
    pred, labels, probs, truths = folders
    result = evaluate_paths(pred, labels)
    reference = metrics.evaluate_stack(
        [np.round(p * 255).astype(np.uint8) for p in probs], truths, names=["a", "b", "c"]
    )
    out = write_json(result, tmp_path / "m.json")
    back = json.loads(out.read_text())
    assert back.keys() == reference.keys()
    assert back["mean"].keys() == reference["mean"].keys()
    assert back["best_threshold"].keys() == reference["best_threshold"].keys()
    assert back["curves"].keys() == reference["curves"].keys()
    assert back["warping_topology"].keys() == reference["warping_topology"].keys()
    assert [e.keys() for e in back["images"]] == [e.keys() for e in reference["images"]]
    assert back == json.loads(json.dumps(reference))  # same numbers too
    assert sorted(x.name for x in tmp_path.iterdir() if x.is_file()) == ["m.json"]  # no temp left


def test_format_table_rows_and_stack_only_column(folders) -> None:
    pred, labels, _, _ = folders
    result = evaluate_paths(pred, labels)
    text = format_table(result, threshold=0.5)
    lines = text.split("\n\n")[0].splitlines()  # the pixel / Rand table; the cells table comes last
    header = lines[0].split()
    assert header == ["image", *TABLE_COLUMNS]
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines if ln[:1] not in ("-", "") and ln.split()}
    for name in ("a", "b", "c"):
        cells = rows[name]
        assert len(cells) == len(TABLE_COLUMNS)
        assert cells[TABLE_COLUMNS.index("isbi_pixel_error")] == "-"
        entry = next(e for e in result["images"] if e["name"] == name)
        assert float(cells[TABLE_COLUMNS.index("dice")]) == pytest.approx(entry["dice"], abs=5e-5)
    mean = rows["mean"]
    assert float(mean[TABLE_COLUMNS.index("isbi_pixel_error")]) == pytest.approx(
        result["mean"]["isbi_pixel_error"], abs=5e-5
    )
    # All data rows line up (fixed width).
    widths = {len(ln) for ln in lines[:1] + [ln for ln in lines if ln.startswith(("a ", "mean"))]}
    assert len(widths) == 1
    assert any(ln.startswith("best thresholds:") and "warping_error" in ln for ln in text.splitlines())
    cells, sizes = (block.splitlines() for block in text.split("\n\n")[-2:])
    assert cells[0].startswith("cells, matched one to one by IoU")
    cell_rows = {ln.split()[0]: ln.split()[1:] for ln in cells[1:] if ln[:1] != "-"}
    assert set(cell_rows) == {"image", "a", "b", "c", "pooled"}
    assert float(cell_rows["pooled"][2]) == pytest.approx(result["cells"]["pooled"]["ap_50"], abs=5e-5)
    # Below: the true cells by size, one row per bin, their counts adding up to the true cells.
    assert sizes[0].startswith("true cells by size") and sizes[-1].startswith("(found: matched at IoU 0.5")
    by_size = result["cells"]["by_size"]["rows"]
    assert len(sizes) == 4 + len(by_size)  # title, heading, rule, the bins, legend
    assert sum(r["cells"] for r in by_size) == result["cells"]["pooled"]["n_true"]
    assert sum(r["found"] for r in by_size) == result["cells"]["pooled"]["at"][0]["tp"]
    for line, r in zip(sizes[3:-1], by_size):  # each printed row ends with its bin's counts
        counts = re.sub(r" \(\d+%\)", "", line).split()[-4:]
        assert counts == [str(r[k]) for k in ("cells", "found", "merged", "missed")]


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def test_report_is_one_self_contained_file(tmp_path: Path, folders, capsys) -> None:
    pred, labels, _, truths = folders
    images = tmp_path / "images"
    images.mkdir()
    for stem, t in zip("abc", truths):
        rgb = np.stack([t // 2, t // 3, t // 4], axis=-1).astype(np.uint8)
        Image.fromarray(rgb).save(images / f"{stem}.png")
    out = tmp_path / "report"
    result = run_evaluate(pred, labels, json_path=tmp_path / "m.json", report_dir=out, images=images)
    printed = capsys.readouterr().out
    assert "mean" in printed and "best thresholds" in printed
    assert [p.name for p in out.iterdir()] == ["index.html"]
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert page.count('src="data:image/png;base64,') == 5 * 3 + 1  # input, prediction, truth, errors, cells; curves
    for e in result["images"]:
        assert f"<h3>{e['name']} " in page
    sizes = page[page.index("True cells by size"):]
    sizes = sizes[:sizes.index("</table>")]
    assert sizes.count("<tr>") == 1 + len(result["cells"]["by_size"]["rows"])  # heading + a row per bin
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.I)
    assert "<script" not in page.lower() and "@import" not in page and "url(" not in page
    assert "http" not in page
    # Every embedded picture decodes as a PNG.
    import base64
    import io

    for uri in re.findall(r'data:image/png;base64,([A-Za-z0-9+/=]+)', page):
        assert Image.open(io.BytesIO(base64.b64decode(uri))).format == "PNG"


def test_report_without_inputs_and_downscaled(tmp_path: Path) -> None:
    t = np.zeros((600, 90), np.uint8)
    t[:, 10:40] = 255
    t[:, 50:80] = 255
    p = (t > 0).astype(np.float64)
    p[300, 10:40] = 0.0  # splits one cell
    result = metrics.evaluate_stack([p], [t], names=["tall<&>"])
    page_path = write_report(result, [p], [t], None, tmp_path / "r")
    page = page_path.read_text()
    assert page.count("data:image/png;base64,") == 4 + 1  # prediction, truth, errors, cells; curves
    assert "tall&lt;&amp;&gt;" in page and "tall<&>" not in page
    assert "shown at 1/2" in page
    classes = error_classes(p, t)
    assert np.count_nonzero(classes == 3) > 0  # the cut is a split


def test_error_classes_pixel_vs_topology() -> None:
    t = np.zeros((20, 30), np.uint8)
    t[2:18, 2:13] = 255
    t[2:18, 15:28] = 255
    shifted = t.copy()
    shifted[2:18, 12] = 0  # boundary moved by one pixel: no topology change
    merged = t.copy()
    merged[8:10, 13:15] = 255  # a bridge across the membrane: a merge
    c_shift = error_classes(shifted, t)
    assert set(np.unique(c_shift)) == {0, 1}
    c_merge = error_classes(merged, t)
    assert np.count_nonzero(c_merge == 4) > 0
    assert np.count_nonzero(c_merge == 3) == 0
