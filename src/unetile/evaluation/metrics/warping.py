"""The warping error (Jain et al. 2010): the truth is warped towards the prediction through
simple points only (Bertrand & Malandain 1994), and the pixels still wrong count as topology
errors, split into splits and mergers (Fiji ``WarpingError``)."""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage as ndi

from .common import (
    EIGHT,
    FOUR,
    WARPING_THRESHOLDS,
    SweepResult,
    best_on_curve,
    check_pair,
    check_thresholds,
    paired_stack,
    read_prediction,
    truth_foreground,
)

# Neighbour k of a pixel is bit k of its 8-bit neighbourhood code.
_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _simple_table() -> bytes:
    """For every 8-neighbourhood, whether the centre is a simple point.

    Simple iff T4(foreground) = 1 and T8(background) = 1 (Bertrand & Malandain 1994; Fiji
    ``WarpingError.simple2DBertrand(patch, 4)``): T4 counts the 4-connected components of
    foreground neighbours that touch a 4-neighbour of the centre, T8 the 8-connected
    components of background neighbours; the centre itself is excluded, so the answer is the
    same for flipping 0 -> 1 and 1 -> 0.
    """
    pos = _NEIGHBOURS
    four_adj = [[abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1 for b in pos] for a in pos]
    eight_adj = [[a != b and max(abs(a[0] - b[0]), abs(a[1] - b[1])) == 1 for b in pos]
                 for a in pos]
    is_four_nb = [abs(dy) + abs(dx) == 1 for dy, dx in pos]

    def components(members: list[int], adj: list[list[bool]]) -> list[set[int]]:
        left, comps = set(members), []
        while left:
            stack = [left.pop()]
            comp = set(stack)
            while stack:
                a = stack.pop()
                for b in list(left):
                    if adj[a][b]:
                        left.remove(b)
                        comp.add(b)
                        stack.append(b)
            comps.append(comp)
        return comps

    table = bytearray(256)
    for code in range(256):
        fg = [k for k in range(8) if code >> k & 1]
        bg = [k for k in range(8) if not code >> k & 1]
        t4 = sum(1 for c in components(fg, four_adj) if any(is_four_nb[k] for k in c))
        t8 = len(components(bg, eight_adj))
        table[code] = 1 if (t4 == 1 and t8 == 1) else 0
    return bytes(table)


_SIMPLE = _simple_table()


@dataclass(frozen=True)
class WarpResult:
    """Result of warping a binary truth toward a thresholded prediction.

    warped: ``(H, W)`` bool warped truth; error: fraction of pixels where it still differs
    from ``pred > threshold``; mismatches: ``(K, 2)`` (y, x) of those pixels; splits /
    mergers: number of split / merge errors among them (see `warp_truth`).
    """

    warped: np.ndarray
    error: float
    mismatches: np.ndarray
    splits: int
    mergers: int


def _warp(truth_fg: np.ndarray, prob: np.ndarray, threshold: float) -> np.ndarray:
    """Simple-point warping of ``truth_fg`` toward ``prob > threshold`` (Fiji
    ``WarpingError.simplePointWarp2d``), returning the warped ``(H, W)`` bool image.

    Fiji sweeps the mismatching pixels in order of decreasing ``|p - threshold|`` (ties in
    x-major, then y order: Java's stable sort of its x/y scan), flips every simple one at
    once, and repeats until a sweep flips nothing.  A flipped pixel matches the target and is
    never touched again, and a pixel's simplicity only changes when a neighbour flips, so the
    same result is obtained by re-checking only pixels next to a flip: those ranked after the
    flip are re-checked in the same sweep (a heap), the others in the next sweep.
    """
    h, w = truth_fg.shape
    wp = w + 2
    src = np.zeros((h + 2, wp), dtype=np.uint8)
    src[1:-1, 1:-1] = truth_fg
    tgt = np.zeros_like(src)
    tgt[1:-1, 1:-1] = prob > threshold
    mism = np.flatnonzero(src != tgt)
    if mism.size == 0:
        return truth_fg.copy()
    ys, xs = np.divmod(mism, wp)
    # Fiji stores the key as a float: |float32 pixel - double threshold| cast to float.
    prob32 = prob.astype(np.float32).astype(np.float64)
    key = np.abs(prob32[ys - 1, xs - 1] - threshold).astype(np.float32)
    order = np.lexsort((ys, xs, -key))
    pts = mism[order].tolist()
    rank_arr = np.full(src.size, -1, dtype=np.int64)
    rank_arr[mism[order]] = np.arange(len(pts))
    rank = rank_arr.tolist()
    s = bytearray(src.tobytes())
    simple = _SIMPLE
    o0, o1, o2 = -wp - 1, -wp, -wp + 1
    o5, o6, o7 = wp - 1, wp, wp + 1
    offsets = (o0, o1, o2, -1, 1, o5, o6, o7)
    queued = bytearray(len(s))
    for q in pts:
        queued[q] = 1
    flipped = bytearray(len(s))
    heappop, heappush = heapq.heappop, heapq.heappush
    cur = list(range(len(pts)))  # already a heap: sorted
    while cur:
        nxt: list[int] = []
        while cur:
            r = heappop(cur)
            q = pts[r]
            queued[q] = 0
            code = (s[q + o0] | s[q + o1] << 1 | s[q + o2] << 2 | s[q - 1] << 3
                    | s[q + 1] << 4 | s[q + o5] << 5 | s[q + o6] << 6 | s[q + o7] << 7)
            if simple[code]:
                s[q] ^= 1
                flipped[q] = 1
                for o in offsets:
                    nb = q + o
                    rr = rank[nb]
                    if rr >= 0 and not flipped[nb] and not queued[nb]:
                        queued[nb] = 1
                        if rr > r:
                            heappush(cur, rr)
                        else:
                            nxt.append(rr)
        heapq.heapify(nxt)
        cur = nxt
    out = np.frombuffer(bytes(s), dtype=np.uint8).reshape(h + 2, wp)
    return out[1:-1, 1:-1].astype(bool)


# Mismatch classes of Fiji WarpingError.classifyMismatches2d.
_OBJECT_ADDITION, _OBJECT_DELETION, _HOLE_ADDITION, _HOLE_DELETION, MERGE, SPLIT = range(6)


def classify_mismatches(warped: np.ndarray, mismatches: np.ndarray) -> np.ndarray:
    """Classify remaining mismatches (Fiji ``WarpingError.classifyMismatches2d``, radius -1).

    With the 4-connected components of the warped truth and the set U of component ids
    (0 = background) among the pixel's 8 neighbours inside the image:
    U = {0}: object deletion (pixel white) / addition (black); U = {c}: hole addition
    (white) / deletion (black); |U| = 2: black -> hole addition, white -> split if removing
    the pixel leaves more than 2 ids around it, else hole deletion; |U| > 2: merge (black) /
    split (white).
    """
    comps, _ = ndi.label(warped, structure=FOUR)
    slices = ndi.find_objects(comps)
    h, w = warped.shape
    out = np.empty(len(mismatches), dtype=np.int8)
    for k, (y, x) in enumerate(mismatches.tolist()):
        ids = set()
        for dy, dx in _NEIGHBOURS:
            yy, xx = y + dy, x + dx
            if 0 <= yy < h and 0 <= xx < w:
                ids.add(int(comps[yy, xx]))
        own = int(comps[y, x])
        white = own != 0
        if ids == {0}:
            out[k] = _OBJECT_DELETION if white else _OBJECT_ADDITION
        elif len(ids) == 1:
            out[k] = _HOLE_ADDITION if white else _HOLE_DELETION
        elif len(ids) == 2:
            if not white:
                out[k] = _HOLE_ADDITION
            else:
                sl = slices[own - 1]
                sub = comps[sl] == own
                sy, sx = y - sl[0].start, x - sl[1].start
                sub[sy, sx] = False
                pieces, _ = ndi.label(sub, structure=FOUR)
                around = set()
                for dy, dx in _NEIGHBOURS:
                    yy, xx = sy + dy, sx + dx
                    if 0 <= yy < sub.shape[0] and 0 <= xx < sub.shape[1] and pieces[yy, xx]:
                        around.add(int(pieces[yy, xx]))
                n_after = len(ids - {own}) + len(around)
                out[k] = SPLIT if n_after > 2 else _HOLE_DELETION
        else:
            out[k] = MERGE if not white else SPLIT
    return out


def warp_truth(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> WarpResult:
    """Warp the binary truth toward ``pred > threshold`` and classify what still differs.

    Error = fraction of the ``H * W`` pixels where the warped truth differs from the
    thresholded prediction (Fiji ``simplePointWarp2d``: ``diff / (width * height)``).
    ``splits`` / ``mergers`` count split / merge *errors*: the remaining mismatching pixels
    classified as in Fiji ``classifyMismatches2d``, then grouped into 4-connected clusters
    (splits) and 8-connected clusters (mergers) as in ``clusterMismatchesByError``.
    """
    check_pair(pred, truth)
    prob = read_prediction(pred).prob
    fg = truth_foreground(truth)
    warped = _warp(fg, prob, float(threshold))
    diff = warped != (prob > threshold)
    ys, xs = np.nonzero(diff)
    mism = np.stack([ys, xs], axis=1)
    splits = mergers = 0
    if len(mism):
        cls = classify_mismatches(warped, mism)
        for kind, struct in ((SPLIT, FOUR), (MERGE, EIGHT)):
            img = np.zeros_like(diff)
            sel = mism[cls == kind]
            img[sel[:, 0], sel[:, 1]] = True
            count = int(ndi.label(img, structure=struct)[1]) if len(sel) else 0
            if kind == SPLIT:
                splits = count
            else:
                mergers = count
    return WarpResult(warped, float(np.count_nonzero(diff) / diff.size), mism, splits, mergers)


def warping_error(
    preds: np.ndarray | Sequence[np.ndarray],
    truths: np.ndarray | Sequence[np.ndarray],
    thresholds: Iterable[float] = WARPING_THRESHOLDS,
) -> SweepResult:
    """Warping error (Jain et al. 2010; Fiji ``WarpingError.getMetricValue``), minimised
    over thresholds 0.0 ... 0.9.

    Per threshold: each slice's truth is warped by simple-point flips toward
    ``pred > t`` (see `warp_truth`), the slice error is the fraction of pixels still
    differing, and the stack error is the mean over slices.  Lower is better.
    """
    p_list, t_list = paired_stack(preds, truths)
    ts = check_thresholds(thresholds)
    probs = [read_prediction(p).prob for p in p_list]
    fgs = [truth_foreground(t) for t in t_list]
    per: list[list[float]] = []
    for t in ts:
        row = []
        for prob, fg in zip(probs, fgs):
            warped = _warp(fg, prob, t)
            row.append(float(np.count_nonzero(warped != (prob > t)) / warped.size))
        per.append(row)
    curve = [(t, float(np.mean(row))) for t, row in zip(ts, per)]
    best_t, best_v = best_on_curve(curve, maximise=False)
    return SweepResult(best_v, best_t, curve, per[ts.index(best_t)])


