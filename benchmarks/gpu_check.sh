#!/usr/bin/env bash
# Every GPU check of issue 23 in one run on one GPU machine (about 8 minutes on an H200);
# every figure lands in $OUT (at most 8 files, so that the device tool brings them all back).
# Each step has its own time box, so that one slow step cannot take the others' figures with it;
# torch.compile (whose compile time is unknown until measured) runs last.
#
#   DATA=.isbi OUT=$OUT benchmarks/gpu_check.sh
#
# DATA: ISBI 2012's labelled slices (images/, labels/); on the device machine a git-ignored
# copy carried with the working tree (../shared does not travel). The last 5 slices are the
# held-apart slices scored here, as in isbi_recipes.sh. LIMIT: each training's clock [3m].
# Preparing it here (2026-12-01): `mkdir .isbi && cp -r ../shared/data/isbi2012/train/{images,labels} .isbi/`;
# MONAI is not on the GPU machine: `pip download --no-deps --only-binary=:all: --python-version 3.12
# -d .whl monai==1.6.1`, then run with carry [".isbi", ".whl"] and, first in the command,
# `python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site;`
# Writes: gpu.txt, test_cuda.log, benchmark.txt, benchmark.json, throughput.txt, log.txt
# (training / predict / evaluate logs), scores.json (per recipe: scores, steps/s), compile.txt.
set -uo pipefail
OUT=${OUT:-gpu_check}; DATA=${DATA:-../shared/data/isbi2012/train}; PY=${PY:-python3}; LIMIT=${LIMIT:-3m}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$OUT/test_cuda.log" 2>&1
timeout 180 "$PY" -m unetile benchmark --device cuda --json "$OUT/benchmark.json" \
    --methods reference,monai,predict_tiled,onnxruntime,limit > "$OUT/benchmark.txt" 2>&1
# The model alone (random data, no augmentation) at each preset's shape: what training should reach.
timeout 60 "$PY" benchmarks/train_throughput.py --device cuda --configs 16:256:4:bf16,64:572:1:bf16 \
    > "$OUT/throughput.txt" 2>&1

split=$(mktemp -d)
mapfile -t names < <(ls "$DATA/images" | sort)
n=${#names[@]}
for i in "${!names[@]}"; do
    part=train; [ "$i" -ge $((n - 5)) ] && part=val
    for d in images labels; do mkdir -p "$split/$part/$d"; ln -s "$(realpath "$DATA/$d/${names[$i]}")" "$split/$part/$d/"; done
done
for recipe in default paper; do
    opts=(); [ "$recipe" = paper ] && opts=(--preset paper)
    run="$split/run-$recipe"
    { timeout $((${LIMIT%m} * 60 + 60)) "$PY" -m unetile train --data "$split/train" --val "$split/val" --out "$run" --time-limit "$LIMIT" "${opts[@]}" &&
      timeout 60 "$PY" -m unetile -q predict --model "$run/best.pt" --input "$split/val/images" --out "$split/pred-$recipe" --tta &&
      timeout 60 "$PY" -m unetile -q evaluate --pred "$split/pred-$recipe" --labels "$split/val/labels" --json "$split/scores-$recipe.json"
    } >> "$OUT/log.txt" 2>&1 || echo "$recipe: failed" >> "$OUT/log.txt"
done

"$PY" - "$split" "$OUT/scores.json" <<'PY'
import csv, json, sys
from pathlib import Path
split, out = Path(sys.argv[1]), Path(sys.argv[2])
result = {}
for recipe in ("default", "paper"):
    try:
        rows = list(csv.DictReader(open(split / f"run-{recipe}" / "metrics.csv")))
        scores = json.loads((split / f"scores-{recipe}.json").read_text())["mean"]
    except (OSError, KeyError, ValueError) as e:
        result[recipe] = {"error": str(e)}
        continue
    steps = int(rows[-1]["step"])
    train_s = sum(float(r["seconds"]) - float(r["val_seconds"]) for r in rows)
    result[recipe] = {"steps": steps, "train_steps_per_s": steps / train_s, "scores": scores}
out.write_text(json.dumps(result, indent=2))
print(json.dumps(result, indent=2))
PY

# torch.compile + CUDA graphs, last: each new tile batch shape compiles anew (rows print as they finish).
timeout "${COMPILE_LIMIT:-120}" "$PY" -m unetile benchmark --device cuda --sides 2048,8192 \
    --methods predict_tiled,predict_tiled+compile > "$OUT/compile.txt" 2>&1 || echo "stopped: $?" >> "$OUT/compile.txt"
