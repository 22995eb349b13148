"""3D training recipes side by side on the same volumes, split and clock, scored on 3D objects.

    .venv/bin/python benchmarks/volume_recipes.py --data runs/split_a --minutes 15 --seeds 0 \
        "distance: --cell-target distance" "boundary: --cell-target boundary"

For each seed every recipe trains at once (``unetile train --dims 3`` with its options, one compute
thread each, for the same wall-clock limit), so two recipes share the 2 cores as the two runs of
`volumes_vs_planes.py` do and their figures compare with that table's. Each best.pt then segments
the validation volumes (``unetile predict --instances``: the 3D cells chosen in training) and
``unetile evaluate --dims 3`` scores them. A table with mean and spread over the seeds is printed
and written with every run's figures to OUT/summary.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from cpu_clock import wait_cpu
from volume_cells import score, summary_table
from volumes_vs_planes import run, start_training


def parse_recipe(text: str) -> tuple[str, list[str]]:
    """"NAME: [unetile train options]" -> (NAME, options)."""
    name, _, options = text.partition(":")
    return name.strip(), shlex.split(options)


def one_seed(data: Path, out: Path, minutes: float, seed: int, recipes: dict[str, list[str]]) -> dict:
    runs = {name: out / f"{name}_s{seed}" for name in recipes}
    trainings = {name: start_training(data, runs[name], 3, minutes, seed, options) for name, options in recipes.items()}
    cpu = {name: wait_cpu(process) for name, process in trainings.items()}
    scores = {}
    for name, folder in runs.items():
        cells = folder.with_name(f"{folder.name}_cells")
        run("predict", "--model", str(folder / "best.pt"), "--input", str(data / "val" / "images"), "--out",
            str(cells), "--instances", "--overwrite")
        scores[name] = {**score(cells, data / "val" / "labels", folder.with_suffix(".json")),
                        "cpu_minutes": cpu[name] / 60}
    return {"seed": seed, "scores": scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="+", help='"NAME: [unetile train options]"')
    parser.add_argument("--data", required=True, help="a folder with train/ and val/ (images/, labels/ volumes)")
    parser.add_argument("--minutes", type=float, default=15.0, help="wall-clock training limit per run")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", default="runs/volume_recipes")
    args = parser.parse_args()
    recipes = dict(map(parse_recipe, args.recipes))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in (int(s) for s in args.seeds.split(",")):
        results.append(one_seed(Path(args.data), out, args.minutes, seed, recipes))
        print(json.dumps(results[-1]), flush=True)
        (out / "summary.json").write_text(json.dumps({"minutes": args.minutes, "recipes": args.recipes,
                                                      "results": results}, indent=1))
    print(f"\n{args.data}, {args.minutes} wall-minutes per run, {len(recipes)} side by side, seeds {args.seeds}; "
          "mean ± std over seeds\n")
    print(summary_table(results, list(recipes)))


if __name__ == "__main__":
    main()
