#!/usr/bin/env bash
# Compare training recipes on ISBI 2012: several runs at once, each a fixed number of steps,
# then `unetile predict --tta` and `unetile evaluate` on the held-apart slices. One table at the end.
#
#   benchmarks/isbi_recipes.sh "default:" "nobal: --no-class-balance" "w3: --w0 3 --seed 1"
#
# Each argument is NAME: [unetile train options]. Environment (defaults in brackets):
#   DATA     folder with images/ and labels/ [../shared/data/isbi2012/train]
#   VAL      how many of the last slices validate [5, the default --val-fraction 0.2 of 24]
#   EPOCHS   epochs per run; the fast preset's epoch is 96 steps [29 = 2784 steps, what 15
#            minutes on 2 CPU cores give]
#   WORKERS  DataLoader workers per run [2]   OUT  where runs, predictions, scores go [runs/recipes]
# On a 16-core GPU machine five runs at once take about 2.5 minutes (about 21 steps/s each).
# Runs are not bit-repeatable on a GPU: compare recipes over seeds (--seed), not single runs.
set -euo pipefail
DATA=${DATA:-../shared/data/isbi2012/train}
VAL=${VAL:-5}
EPOCHS=${EPOCHS:-29}
WORKERS=${WORKERS:-2}
OUT=${OUT:-runs/recipes}
UNET=${UNET:-unetile}
[ $# -gt 0 ] || { echo "usage: $0 'NAME: [train options]' ..." >&2; exit 2; }
command -v "$UNET" > /dev/null || { echo "$UNET: not found (activate .venv, or set UNET=.venv/bin/unetile)" >&2; exit 2; }
for d in images labels; do [ -d "$DATA/$d" ] || { echo "$DATA: no $d/ folder" >&2; exit 2; }; done

# The split as folders (links, no copies): the last $VAL slices validate, the rest train.
split="$OUT/split"
rm -rf "$split"
mkdir -p "$split"/{train,val}/{images,labels}
mapfile -t names < <(ls "$DATA/images" | sort)
n=${#names[@]}
[ "$n" -gt "$VAL" ] || { echo "$DATA: $n images, too few to hold $VAL back" >&2; exit 2; }
for i in "${!names[@]}"; do
    part=train; [ "$i" -ge $((n - VAL)) ] && part=val
    for d in images labels; do
        [ -e "$DATA/$d/${names[$i]}" ] || { echo "$DATA/$d/${names[$i]}: missing" >&2; exit 2; }
        ln -s "$(realpath "$DATA/$d/${names[$i]}")" "$split/$part/$d/${names[$i]}"
    done
done

one() {  # NAME OPTIONS...
    local name=$1; shift
    local dir="$OUT/$name"
    mkdir -p "$dir"
    "$UNET" -q train --data "$split/train" --val "$split/val" --out "$dir/run" --overwrite --epochs "$EPOCHS" \
        --workers "$WORKERS" "$@" > "$dir/train.log" 2>&1 &&
    "$UNET" -q predict --model "$dir/run/best.pt" --input "$split/val/images" --out "$dir/pred" --tta --overwrite \
        > "$dir/predict.log" 2>&1 &&
    "$UNET" -q evaluate --pred "$dir/pred" --labels "$split/val/labels" --json "$dir/scores.json" \
        > "$dir/evaluate.log" 2>&1 || { echo "$name: failed, see $dir/*.log" >&2; return 1; }
}

pids=()
for job in "$@"; do
    name=${job%%:*}
    read -ra opts <<< "${job#*:}"
    one "$name" "${opts[@]}" &
    pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done

printf '%-16s %-48s %6s %12s %13s\n' recipe options steps "pixel error" "adapted Rand"
for job in "$@"; do
    name=${job%%:*}
    python3 - "$OUT/$name" "${job#*:}" <<'EOF'
import csv, json, sys
from pathlib import Path
d, opts = Path(sys.argv[1]), sys.argv[2].strip()
try:
    mean = json.loads((d / "scores.json").read_text())["mean"]
    steps = list(csv.DictReader(open(d / "run" / "metrics.csv")))[-1]["step"]
    print(f"{d.name:16s} {opts:48s} {steps:>6s} {mean['pixel_error']:12.4f} {mean['adapted_rand_error']:13.4f}")
except (OSError, KeyError, IndexError, ValueError) as e:
    print(f"{d.name:16s} {opts:48s} failed ({e})")
EOF
done
exit $failed
