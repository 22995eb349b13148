"""Fine-tuning with few labels (`unetile train --init`) against training from scratch, same clock.

On the DSB 2018 fluorescence split of `nuclei_recipes.py` (run that first): the model given
by ``--pretrained`` was trained on the split's train images. The 90 test images, which it
never saw, are cut in two by the SHA-1 order of their names: the first ``--pool`` (20) are
the labelled images a user would have, the other 70 are scored. For each k in ``--shots``
(5, 10, 20), the first k of the pool are trained on twice, from scratch and from the
pretrained model, each for ``--time-limit``; both are scored with `unetile predict --tta
--instances` and `unetile evaluate`, as is the pretrained model untouched (k = 0).

    .venv/bin/python benchmarks/finetune_nuclei.py \\
        --pretrained runs/nuclei/default---seed-1/run/best.pt --time-limit 5m
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from nuclei_recipes import append_row, format_rows, hashed_names, link_pairs, run_recipe, score_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", required=True, help="a best.pt trained on the split's train images")
    parser.add_argument("--split", default="runs/nuclei/split", help="the split of nuclei_recipes.py")
    parser.add_argument("--out", default="runs/finetune", help="runs, predictions, scores, table")
    parser.add_argument("--pool", type=int, default=20, help="test images that may be labelled (default: 20)")
    parser.add_argument("--shots", default="5,10,20", help="numbers of labelled images (default: 5,10,20)")
    parser.add_argument("--time-limit", default="5m", help="training clock of every run (default: 5m)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    split, out = Path(args.split), Path(args.out)
    names = hashed_names(split / "test" / "images")
    pool, scored = names[: args.pool], names[args.pool :]
    test = link_pairs(split / "test", scored, out / "scored")
    results = out / "results.jsonl"
    rows = [score_model("pretrained, no fine-tuning", [], Path(args.pretrained), test, out / "k0")]
    append_row(rows[-1], results)
    for k in (int(v) for v in args.shots.split(",")):
        labelled = link_pairs(split / "test", pool[:k], out / f"labelled-{k}")
        for start, init in (("scratch", []), ("--init", ["--init", args.pretrained])):
            options = [*init, "--seed", str(args.seed)]
            folder = out / f"k{k}-{'init' if init else 'scratch'}-seed-{args.seed}"
            rows.append(run_recipe(f"{k} images, {start}", options, labelled, test, folder, args.time_limit))
            append_row(rows[-1], results)
    print(format_rows(rows))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
