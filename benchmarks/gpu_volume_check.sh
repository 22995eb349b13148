#!/usr/bin/env bash
# Every GPU-machine check of issue 34 (volumes) in one run (about 8 minutes on an H200 machine);
# every figure lands in $OUT (at most 8 files come back). Each step has its own time box, so
# that one slow step cannot take the others' figures with it.
#
#   OUT=$OUT benchmarks/gpu_volume_check.sh
#
# 1. tests/test_cuda.py: the GPU paths, volumes among them (3D tiling on CUDA == CPU, a 3D run
#    trained on the GPU, its cells alike on both devices);
# 2. the paper-sized 3D net's prediction speed on the GPU (benchmarks/volume_speed.py --device cuda)
#    against the GPU's bf16 limit;
# 3. the same on the machine's CPU cores (bf16 where its CPU has it: the CPU limit issue 34 asks
#    for, which our 2-core machines, without bf16, cannot measure);
# 4. peak host memory of a 512 x 2048 x 2048 OME-Zarr volume predicted block by block on a local
#    Dask cluster whose workers run on the GPU (benchmarks/zarr_volume.py --device cuda), sampled
#    every 10 s, so that a run stopped by its time box still shows how memory grew.
#
# zarr, ome-zarr and dask are not on the GPU machine: carry them as wheels (.whl, git-ignored):
#   pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       --platform any -d .whl zarr==3.1.6 ome-zarr==0.18.0 'dask[distributed]==2026.8.0'
# then delete the wheels of packages the machine has (numpy, scipy, ...: see the device notes);
# run with carry [".whl"]; this script installs them into /tmp/site.
# Writes: host.txt, test_cuda.log, vspeed_cuda.txt, vspeed_cpu.txt, vspeed.json (both), zarr.txt, peaks.jsonl.
set -uo pipefail
OUT=${OUT:-gpu_volume_check}; PY=${PY:-python3}
mkdir -p "$OUT"
if ls .whl/*.whl > /dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > "$OUT/host.txt" 2>&1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; lscpu | grep -E "Model name|^CPU\(s\)|Flags" |
  sed -E 's/^(Flags:).*/\1 '"$(grep -o -E 'avx512[a-z_0-9]*|amx[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' ')"'/';
  free -g | head -2; "$PY" -c "import torch, zarr, distributed; print('torch', torch.__version__, 'zarr', zarr.__version__,
  'distributed', distributed.__version__)"; } >> "$OUT/host.txt" 2>&1

timeout 130 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$OUT/test_cuda.log" 2>&1
timeout 60 "$PY" benchmarks/volume_speed.py --device cuda --shape 192,640,640 --json "$OUT/vspeed_cuda.json" \
    > "$OUT/vspeed_cuda.txt" 2>&1
timeout 120 "$PY" benchmarks/volume_speed.py --device cpu --json "$OUT/vspeed_cpu.json" > "$OUT/vspeed_cpu.txt" 2>&1
"$PY" -c "import json,sys; json.dump({k: json.load(open(f'$OUT/vspeed_{k}.json')) for k in ('cuda','cpu')
    if __import__('os').path.exists(f'$OUT/vspeed_{k}.json')}, open('$OUT/vspeed.json','w'), indent=1)"
rm -f "$OUT"/vspeed_cuda.json "$OUT"/vspeed_cpu.json

timeout "${ZARR_LIMIT:-200}" "$PY" benchmarks/zarr_volume.py --shapes 512x2048x2048 --workers 8 --makers 14 \
    --device cuda --out /tmp/zarr_volume > "$OUT/zarr.txt" 2>&1 || echo "stopped: $?" >> "$OUT/zarr.txt"
cp /tmp/zarr_volume/peaks-512x2048x2048.jsonl "$OUT/peaks.jsonl" 2>/dev/null
df -h /tmp | tail -1 >> "$OUT/zarr.txt"
