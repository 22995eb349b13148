"""Compare training recipes for touching nuclei on the DSB 2018 fluorescence images.

Each recipe is trained under the same clock, one run at a time (the runs share the CPU
otherwise), then `unet predict --tta --instances` segments the held-apart test images and
`unet evaluate` scores the cells. One table at the end, also written as JSON.

    .venv/bin/python benchmarks/nuclei_recipes.py --time-limit 15m \\
        "default: --seed 0" "default: --seed 1" "three-class: --instance-head boundary --seed 0"

The split (links, no copies): the images sorted by the SHA-1 of their names, the first
``--test`` of them held apart for testing; the rest train, and `unet train` validates on
the last 20% of those (its ``--val-fraction``). The same names always give the same split.
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

UNET = [sys.executable, "-m", "unet"]


def make_split(data: Path, out: Path, n_test: int) -> tuple[Path, Path]:
    """-> (train folder, test folder), each with images/ and labels/ of links."""
    names = sorted((p.name for p in (data / "images").iterdir()), key=lambda n: hashlib.sha1(n.encode()).hexdigest())
    if len(names) <= n_test:
        raise SystemExit(f"{data}: {len(names)} images, too few to hold {n_test} apart")
    for part, chosen in (("train", names[n_test:]), ("test", names[:n_test])):
        for kind in ("images", "labels"):
            folder = out / "split" / part / kind
            folder.mkdir(parents=True, exist_ok=True)
            for name in chosen:
                link = folder / name
                if not link.exists():
                    link.symlink_to((data / kind / name).resolve())
    return out / "split" / "train", out / "split" / "test"


def run_recipe(name: str, options: list[str], train: Path, test: Path, folder: Path, time_limit: str) -> dict:
    """Train, predict the test images as cells, evaluate (all in ``folder``) -> the row of the table."""
    folder.mkdir(parents=True, exist_ok=True)
    steps = [
        [*UNET, "train", "--data", str(train), "--out", str(folder / "run"), "--overwrite",
         "--time-limit", time_limit, *options],
        [*UNET, "-q", "predict", "--model", str(folder / "run" / "best.pt"), "--input", str(test / "images"),
         "--out", str(folder / "pred"), "--tta", "--instances", "--overwrite"],
        [*UNET, "-q", "evaluate", "--pred", str(folder / "pred"), "--labels", str(test / "labels"),
         "--json", str(folder / "scores.json")],
    ]
    for step, log in zip(steps, ("train.log", "predict.log", "evaluate.log")):
        with open(folder / log, "w") as f:
            if subprocess.run(step, stdout=f, stderr=subprocess.STDOUT).returncode != 0:
                raise SystemExit(f"{name}: {step[3]} failed, see {folder / log}")
    scores = json.loads((folder / "scores.json").read_text())
    cells = scores["cells"]["pooled"]
    with open(folder / "run" / "metrics.csv") as f:
        last = f.read().strip().splitlines()[-1].split(",")
    return {"recipe": name, "options": " ".join(options), "steps": int(last[1]), "ap_50": cells["ap_50"],
            "f1_50": cells["f1_50"], "ap_75": cells["ap_75"], "mean_ap": cells["mean_ap"], "pq": cells["pq_50"],
            "dice": scores["mean"]["dice"], "adapted_rand_error": scores["mean"]["adapted_rand_error"],
            "merged": cells["merged"], "split": cells["split"]}


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
    parser.add_argument("recipes", nargs="+", help='"NAME: [unet train options]"')
    parser.add_argument("--data", default="../shared/data/dsb2018/fluorescence", help="images/ and labels/")
    parser.add_argument("--out", default="runs/nuclei", help="runs, predictions, scores, table")
    parser.add_argument("--test", type=int, default=90, help="images held apart for testing (default: 90)")
    parser.add_argument("--time-limit", default="15m", help="training clock per recipe (default: 15m)")
    args = parser.parse_args()
    out = Path(args.out)
    train, test = make_split(Path(args.data), out, args.test)
    rows = []
    for recipe in args.recipes:
        name, _, options = recipe.partition(":")
        folder = out / "-".join([name.strip(), *shlex.split(options)]).replace("/", "_").replace(" ", "_")
        rows.append(run_recipe(name.strip(), shlex.split(options), train, test, folder, args.time_limit))
        print(format_rows(rows[-1:]).splitlines()[-1], flush=True)
        results = out / "results.jsonl"
        with open(results, "a") as f:
            f.write(json.dumps(rows[-1]) + "\n")
    print(format_rows(rows))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
