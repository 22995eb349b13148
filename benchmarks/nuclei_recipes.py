"""Compare training recipes for touching nuclei on the DSB 2018 fluorescence images.

Each recipe is trained under the same clock, one run at a time (the runs share the CPU
otherwise), then `unetile predict --tta --instances` segments the held-apart test images and
`unetile evaluate` scores the cells. One table at the end, also written as JSON.

    .venv/bin/python benchmarks/nuclei_recipes.py --time-limit 15m \\
        "default: --seed 0" "default: --seed 1" "boundary: --cell-target boundary --seed 0"

The split (links, no copies): the images sorted by the SHA-1 of their names, the first
``--test`` of them held apart for testing; the rest train, and `unetile train` validates on
the last 20% of those (its ``--val-fraction``). The same names always give the same split.
With ``--test-size HxW`` the split is by acquisition instead (image size as its proxy): every
image of that size is held apart, and the recipes train on the other acquisitions only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from PIL import Image

UNET = [sys.executable, "-m", "unetile"]


def hashed_names(folder: Path) -> list[str]:
    """The file names in ``folder`` in the order of the SHA-1 of each name (fixed, unrelated to content)."""
    return sorted((p.name for p in folder.iterdir()), key=lambda n: hashlib.sha1(n.encode()).hexdigest())


def link_pairs(data: Path, names: list[str], folder: Path) -> Path:
    """``folder`` with images/ and labels/ holding links to those of ``data`` named ``names``."""
    for kind in ("images", "labels"):
        (folder / kind).mkdir(parents=True, exist_ok=True)
        for name in names:
            link = folder / kind / name
            if not link.exists():
                link.symlink_to((data / kind / name).resolve())
    return folder


def make_split(data: Path, out: Path, n_test: int) -> tuple[Path, Path]:
    """-> (train folder, test folder), each with images/ and labels/ of links."""
    names = hashed_names(data / "images")
    if len(names) <= n_test:
        raise SystemExit(f"{data}: {len(names)} images, too few to hold {n_test} apart")
    return (link_pairs(data, names[n_test:], out / "split" / "train"),
            link_pairs(data, names[:n_test], out / "split" / "test"))


def make_acquisition_split(data: Path, out: Path, test_size: str) -> tuple[Path, Path]:
    """-> (train folder, test folder): the images ``test_size`` ("HxW") in size to test, the others to train."""
    height, width = (int(n) for n in test_size.lower().split("x"))
    names = hashed_names(data / "images")
    held = {n for n in names if Image.open(data / "images" / n).size == (width, height)}
    if not held or len(held) == len(names):
        raise SystemExit(f"{data}: {len(held)} of {len(names)} images are {test_size}; nothing to split")
    return (link_pairs(data, [n for n in names if n not in held], out / "split" / "train"),
            link_pairs(data, [n for n in names if n in held], out / "split" / "test"))


def run_steps(name: str, steps: list[tuple[list[str], Path]]) -> None:
    """Run each (command, log file); stop with a line naming the log of the first that fails."""
    for step, log in steps:
        with open(log, "w") as f:
            if subprocess.run(step, stdout=f, stderr=subprocess.STDOUT).returncode != 0:
                raise SystemExit(f"{name}: {step[3]} failed, see {log}")


def score_model(name: str, options: list[str], model: Path, test: Path, folder: Path, steps: int = 0) -> dict:
    """`unetile predict --tta --instances` on the test images, `unetile evaluate` -> the row of the table."""
    folder.mkdir(parents=True, exist_ok=True)
    run_steps(name, [
        ([*UNET, "-q", "predict", "--model", str(model), "--input", str(test / "images"), "--out",
          str(folder / "pred"), "--tta", "--instances", "--overwrite"], folder / "predict.log"),
        ([*UNET, "-q", "evaluate", "--pred", str(folder / "pred"), "--labels", str(test / "labels"),
          "--json", str(folder / "scores.json")], folder / "evaluate.log"),
    ])
    scores = json.loads((folder / "scores.json").read_text())
    cells = scores["cells"]["pooled"]
    return {"recipe": name, "options": " ".join(options), "steps": steps, "ap_50": cells["ap_50"],
            "f1_50": cells["f1_50"], "ap_75": cells["ap_75"], "mean_ap": cells["mean_ap"], "pq": cells["pq_50"],
            "dice": scores["mean"]["dice"], "adapted_rand_error": scores["mean"]["adapted_rand_error"],
            "merged": cells["merged"], "split": cells["split"]}


def run_recipe(name: str, options: list[str], train: Path, test: Path, folder: Path, time_limit: str) -> dict:
    """Train, predict the test images as cells, evaluate (all in ``folder``) -> the row of the table."""
    folder.mkdir(parents=True, exist_ok=True)
    run_steps(name, [([*UNET, "train", "--data", str(train), "--out", str(folder / "run"), "--overwrite",
                       "--time-limit", time_limit, *options], folder / "train.log")])
    with open(folder / "run" / "metrics.csv") as f:
        last = f.read().strip().splitlines()[-1].split(",")
    return score_model(name, options, folder / "run" / "best.pt", test, folder, steps=int(last[1]))


def append_row(row: dict, results: Path) -> None:
    print(format_rows([row]).splitlines()[-1], flush=True)
    with open(results, "a") as f:
        f.write(json.dumps(row) + "\n")


def format_rows(rows: list[dict]) -> str:
    head = "| recipe | options | steps | AP@0.5 | F1@0.5 | AP@0.75 | mAP | PQ | Dice | adapted Rand | merged | split |"
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(f"| {r['recipe']} | `{r['options']}` | {r['steps']} | {r['ap_50']:.4f} | {r['f1_50']:.4f} | "
                     f"{r['ap_75']:.4f} | {r['mean_ap']:.4f} | {r['pq']:.4f} | {r['dice']:.4f} | "
                     f"{r['adapted_rand_error']:.4f} | {r['merged']} | {r['split']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="+", help='"NAME: [unetile train options]"')
    parser.add_argument("--data", default="../shared/data/dsb2018/fluorescence", help="images/ and labels/")
    parser.add_argument("--out", default="runs/nuclei", help="runs, predictions, scores, table")
    parser.add_argument("--test", type=int, default=90, help="images held apart for testing (default: 90)")
    parser.add_argument("--test-size", metavar="HxW", help="hold apart every image of this size (by acquisition)")
    parser.add_argument("--time-limit", default="15m", help="training clock per recipe (default: 15m)")
    args = parser.parse_args()
    out = Path(args.out)
    if args.test_size:
        train, test = make_acquisition_split(Path(args.data), out, args.test_size)
    else:
        train, test = make_split(Path(args.data), out, args.test)
    rows = []
    for recipe in args.recipes:
        name, _, options = recipe.partition(":")
        folder = out / "-".join([name.strip(), *shlex.split(options)]).replace("/", "_").replace(" ", "_")
        rows.append(run_recipe(name.strip(), shlex.split(options), train, test, folder, args.time_limit))
        append_row(rows[-1], out / "results.jsonl")
    print(format_rows(rows))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
