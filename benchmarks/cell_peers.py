"""Cellpose 3 and StarDist 2D beside ours: trained from scratch on our nuclei split, at our clock.

    .venv/bin/python benchmarks/cell_peers.py --peers cellpose,stardist --minutes 15,60 \\
        --seeds 0,1,2 --threads 2 --out runs/cell_peers [--venv-root runs/venvs] \\
        [--data ../shared/data/dsb2018/fluorescence] [--test 90]

The split is exactly that of `nuclei_recipes.py`: the images sorted by the SHA-1 of their
names, the first ``--test`` held apart for testing; of the rest (sorted by name, as `unetile
train` reads a folder) the last 20% validate (`unetile train`'s ``--val-fraction`` rule,
imported from unetile so that it cannot drift). OUT/split/{train,val,test} hold links.

Each peer lives in a venv of its own (created when missing; neither is ever our dependency):

- ``VENV_ROOT/cellpose``: ``torch==2.13.0 'cellpose<4' tifffile`` (torch pinned: the CPU build;
  cellpose 3.1 accepts it). `cellpose_peer.py`: Cellpose 3's own net and flows, from scratch,
  with the documented from-scratch settings (``python -m cellpose --train --pretrained_model
  None``: SGD, rate 0.2, weight decay 1e-5, batch 8, all images every epoch, images with fewer
  than 5 cells dropped, diameter 30), stopped after the last whole epoch that fits the clock;
- ``VENV_ROOT/stardist``: ``tensorflow-cpu stardist tifffile``. `stardist_peer.py`: StarDist's
  2D training notebook (``Config2D(n_rays=32, grid=(2, 2), n_channel_in=1)``, its normalisation,
  flips / rot90 / intensity / noise augmentation), stopped by a callback at the clock, then
  ``optimize_thresholds`` on the validation images as the notebook does.

Both train on OUT/split/train and may use OUT/split/val as `unetile train` does, under
``--minutes`` of wall clock per run (the clock starts when the peer starts and covers reading,
flows and training; StarDist's threshold search and the test prediction come after it). Runs
go one at a time, each with ``--threads`` compute threads (OMP / MKL / numba / TF intra-op), so
that the clock is in CPU-minutes of that many cores; each run's CPU time (the whole peer process,
prediction included) comes from ``os.wait4``, and its CPU time to the end of training from the
peer itself. Each peer writes the 90 test images' cells as label TIFFs (``NAME.tif``), scored
here by ``unetile evaluate`` (cells pooled over the test images). A finished run (its row.json)
is reused when the command is run again, so a long measurement can be resumed: delete a run's
folder to redo it. OUT/summary.json is rewritten after every run; the table (mean ± std over
seeds per peer and clock) is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from cpu_clock import wait_cpu
from nuclei_recipes import hashed_names, link_pairs
from peer_venv import ensure_venv

UNETILE = [sys.executable, "-m", "unetile"]
HERE = Path(__file__).parent
PEERS = {"cellpose": HERE / "cellpose_peer.py", "stardist": HERE / "stardist_peer.py"}
# torch pinned to the CPU build (a plain or ranged `torch` pulls a CUDA build of several GB)
PACKAGES = {"cellpose": ["torch==2.13.0", "cellpose<4", "tifffile"],
            "stardist": ["tensorflow-cpu", "stardist", "tifffile"]}
KEYS = ("ap_50", "ap_75", "mean_ap", "pq", "f1_50", "merged", "split", "cpu_minutes", "train_cpu_minutes")


def make_split(data: Path, out: Path, n_test: int) -> dict[str, Path]:
    """{"train", "val", "test"} -> folders of links (images/, labels/): nuclei_recipes.py's split,
    its training images cut as `unetile train` cuts them (the last 20% by name validate)."""
    from unetile.training.data import split  # the very rule of `unetile train --val-fraction`

    names = hashed_names(data / "images")
    if len(names) <= n_test:
        raise SystemExit(f"{data}: {len(names)} images, too few to hold {n_test} apart")
    train, val = split(sorted(names[n_test:]), 0.2)
    parts = {"train": train, "val": val, "test": names[:n_test]}
    return {part: link_pairs(data, chosen, out / "split" / part) for part, chosen in parts.items()}


def thread_env(threads: int) -> dict[str, str]:
    """The environment of a peer run: every compute pool of its libraries held to ``threads``."""
    n = str(threads)
    return {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n,
            "NUMBA_NUM_THREADS": n, "TF_NUM_INTRAOP_THREADS": n, "TF_NUM_INTEROP_THREADS": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


def train_peer(python: Path, peer: str, split: dict[str, Path], folder: Path, minutes: float, seed: int,
               threads: int) -> float:
    """Run the peer script (train, predict the test images into folder/pred) -> its CPU seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    args = [str(python), str(PEERS[peer]), "--train", str(split["train"]), "--val", str(split["val"]),
            "--test", str(split["test"] / "images"), "--minutes", str(minutes), "--seed", str(seed),
            "--threads", str(threads), "--out", str(folder)]
    with open(folder / "train.log", "w") as log:
        return wait_cpu(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=thread_env(threads)))


def evaluate(pred: Path, labels: Path, json_path: Path) -> dict:
    """`unetile evaluate` of a folder of label images -> the pooled cell scores (names matched by stem)."""
    with open(json_path.with_suffix(".log"), "w") as log:
        subprocess.run([*UNETILE, "evaluate", "--pred", str(pred), "--labels", str(labels), "--json",
                        str(json_path)], check=True, stdout=log, stderr=subprocess.STDOUT)
    scores = json.loads(json_path.read_text())
    cells = scores["cells"]["pooled"]
    return {"ap_50": cells["ap_50"], "ap_75": cells["ap_75"], "mean_ap": cells["mean_ap"], "pq": cells["pq_50"],
            "f1_50": cells["f1_50"], "merged": cells["merged"], "split": cells["split"],
            "dice": scores["mean"]["dice"], "images": len(list(pred.glob("*.tif")))}


def one_run(python: Path, peer: str, split: dict[str, Path], folder: Path, minutes: float, seed: int,
            threads: int) -> dict:
    """Train, predict, score one peer at one clock and seed (reusing a finished run) -> its row."""
    if (folder / "row.json").exists():
        print(f"{folder}: done before, reused", flush=True)
        return json.loads((folder / "row.json").read_text())
    cpu = train_peer(python, peer, split, folder, minutes, seed, threads)
    log = json.loads((folder / "log.json").read_text())
    row = {"peer": peer, "minutes": minutes, "seed": seed, "threads": threads,
           **evaluate(folder / "pred", split["test"] / "labels", folder / "scores.json"),
           "cpu_minutes": cpu / 60, "train_cpu_minutes": log["train_cpu_seconds"] / 60,
           "train_minutes": log["train_seconds"] / 60, "epochs": log["epochs"], "steps": log["steps"],
           "steps_per_minute": log["steps"] / max(log["train_loop_seconds"], 1e-9) * 60}
    (folder / "row.json").write_text(json.dumps(row, indent=1))
    return row


def mean_std(values: list[float]) -> str:
    """"mean ± sd" over seeds (the sample sd, as results.md states spreads); counts without decimals."""
    places = 0 if all(float(v).is_integer() for v in values) else 3
    if len(values) == 1:
        return f"{values[0]:.{places}f}"
    return f"{np.mean(values):.{places or 1}f} ± {np.std(values, ddof=1):.{places or 1}f}"


def summary_table(rows: list[dict]) -> str:
    """Markdown table: one line per (peer, clock), mean ± std over its seeds."""
    head = ["peer", "clock (min)", "seeds", "epochs", "steps", *KEYS]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for peer, minutes in dict.fromkeys((r["peer"], r["minutes"]) for r in rows):
        group = [r for r in rows if r["peer"] == peer and r["minutes"] == minutes]
        cells = [peer, f"{minutes:g}", str(len(group)), mean_std([r["epochs"] for r in group]),
                 mean_std([r["steps"] for r in group]), *(mean_std([r[k] for r in group]) for k in KEYS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", default="cellpose,stardist", help="of: " + ", ".join(PEERS))
    parser.add_argument("--minutes", default="15,60", help="training clocks, wall-clock minutes per run")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=2, help="compute threads per run (default: 2)")
    parser.add_argument("--test", type=int, default=90, help="images held apart for testing (default: 90)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/dsb2018/fluorescence"))
    parser.add_argument("--out", type=Path, default=Path("runs/cell_peers"))
    parser.add_argument("--venv-root", type=Path, default=Path("runs/venvs"), help="VENV_ROOT/{cellpose,stardist}")
    args = parser.parse_args()
    peers = args.peers.split(",")
    unknown = set(peers) - set(PEERS)
    if unknown:
        raise SystemExit(f"unknown peer(s) {', '.join(sorted(unknown))}; known: {', '.join(PEERS)}")
    split = make_split(args.data, args.out, args.test)
    pythons = {peer: ensure_venv(args.venv_root / peer, PACKAGES[peer]) for peer in peers}
    rows = []
    for minutes in (float(m) for m in args.minutes.split(",")):
        for peer in peers:
            for seed in (int(s) for s in args.seeds.split(",")):
                folder = args.out / f"{peer}_{minutes:g}min_seed{seed}"
                rows.append(one_run(pythons[peer], peer, split, folder, minutes, seed, args.threads))
                print(json.dumps(rows[-1]), flush=True)
                (args.out / "summary.json").write_text(json.dumps({"rows": rows, "table": summary_table(rows)},
                                                                  indent=1))
    print(f"\n{args.data}: {args.test} test images; peers trained from scratch, {args.threads} threads each; "
          "mean ± std over seeds\n")
    print(summary_table(rows))


if __name__ == "__main__":
    main()
