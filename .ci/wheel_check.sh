#!/usr/bin/env bash
# CI: what a user gets from `pip install unetile`. Builds the wheel from the files git tracks,
# installs it (not editable) in a fresh venv, and from a folder outside the repository runs
# `unetile models`, a prediction with each shipped model on a synthetic image, and the napari
# plugin as npe2 finds it. Package data that only an editable install carries fails here.
#
#   bash .ci/wheel_check.sh        (PYTHON=python3.11 to choose the interpreter)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/unetile-wheel-check.XXXXXX")"
start=$SECONDS

step() { printf '[wheel %3ds] %s\n' "$((SECONDS - start))" "$*"; }
cleanup() { cd /; rm -rf "$tmp"; step "removed $tmp"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
quiet() {  # a noisy command: its output only when it fails
    if ! "$@" >"$tmp/log" 2>&1; then
        tail -n 40 "$tmp/log"
        echo "wheel check FAILED: $*" >&2
        return 1
    fi
}

step "copying the source (files git tracks) to $tmp/src"
mkdir -p "$tmp/src" "$tmp/dist" "$tmp/work"
if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # tracked and untracked-but-not-ignored files: what a clone holds, without build/, *.egg-info, .venv
    git -C "$root" ls-files -z --cached --others --exclude-standard \
        | tar -C "$root" --null --ignore-failed-read -T - -cf - | tar -C "$tmp/src" -xf -
else
    tar -C "$root" --exclude=.venv --exclude=.git --exclude=build --exclude=dist --exclude='*.egg-info' \
        --exclude=__pycache__ -cf - . | tar -C "$tmp/src" -xf -
fi

step "building the wheel (pip wheel --no-deps; setuptools from the package index)"
quiet "$python" -m pip wheel --no-deps --disable-pip-version-check -w "$tmp/dist" "$tmp/src"
wheels=("$tmp"/dist/unetile-*.whl)
[[ ${#wheels[@]} -eq 1 && -f ${wheels[0]} ]] || { echo "expected one unetile wheel, got: ${wheels[*]}" >&2; exit 1; }
wheel="${wheels[0]}"

step "checking its contents: every file under src/unetile/, the shipped models, the napari manifest"
"$python" - "$wheel" "$tmp/src" <<'EOF'
import sys, zipfile
from pathlib import Path

wheel, src = Path(sys.argv[1]), Path(sys.argv[2])
names = set(zipfile.ZipFile(wheel).namelist())
package = src / "src" / "unetile"
source = {p.relative_to(package.parent).as_posix() for p in package.rglob("*")
          if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
missing = sorted(source - names)
models = sorted(p.parent.name for p in (package / "zoo").glob("*/model.pt"))
required = {"unetile/napari/napari.yaml"} | {f"unetile/zoo/{m}/{f}" for m in models for f in ("model.pt", "card.md")}
missing += sorted(required - names - set(missing))
stray = sorted(n for n in names if not n.startswith(("unetile/", "unetile-")))
entry_points = next((zipfile.ZipFile(wheel).read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt")), "")
problems = [f"missing from the wheel: {n}" for n in missing] + [f"not part of the package: {n}" for n in stray]
problems += [f"entry point missing: {e}" for e in ("unetile = unetile.cli:main", "[napari.manifest]",
                                                  "unetile = unetile.napari:napari.yaml") if e not in entry_points]
if not models:
    problems.append("no shipped model (src/unetile/zoo/*/model.pt) in the source")
if problems:
    sys.exit("wheel check FAILED:\n  " + "\n  ".join(problems))
print(f"  {wheel.name}: {len(names)} files, {wheel.stat().st_size / 1e6:.1f} MB; "
      f"all {len(source)} source files; models: {', '.join(models)}; napari.yaml; entry points")
EOF

step "installing it in a fresh venv (torch==2.13.0 CPU, the wheel, npe2 + magicgui for the plugin check)"
"$python" -m venv "$tmp/venv"
bin="$tmp/venv/bin"
# --no-compile: byte-compiling all of torch at install costs more than the few modules imported here
quiet "$bin/pip" install --disable-pip-version-check --no-compile torch==2.13.0 "$wheel" npe2 magicgui

# From here on: outside the repository, so only the installed wheel can be imported.
cd "$tmp/work"
unset PYTHONPATH
export MPLBACKEND=Agg

step "the import comes from the venv's site-packages, not editable"
"$bin/python" - <<'EOF'
import json, sysconfig
from importlib.metadata import distribution
from pathlib import Path

import unetile

site = Path(sysconfig.get_paths()["purelib"]).resolve()
where = Path(unetile.__file__).resolve()
assert where.is_relative_to(site), f"unetile imported from {where}, not from {site}"
direct = distribution("unetile").read_text("direct_url.json") or "{}"
assert not json.loads(direct).get("dir_info", {}).get("editable"), f"an editable install: {direct}"
assert not list(site.glob("__editable__*unetile*")), "an editable finder for unetile in site-packages"
print(f"  unetile {unetile.__version__} from {where.parent}")
EOF

step "unetile models"
"$bin/unetile" models >models.txt
sed 's/^/  /' models.txt
for name in em-membranes nuclei-fluorescence; do
    grep -q "^$name " models.txt || { echo "wheel check FAILED: unetile models does not list $name" >&2; exit 1; }
done

step "writing test images with the installed unetile.synthetic (256x256 EM-like PNG, fluorescence nuclei TIFF)"
"$bin/python" - <<'EOF'
import numpy as np
from unetile.io import write_image
from unetile.synthetic import synthetic_em, synthetic_nuclei

image, label = synthetic_em(np.random.default_rng(0), 256)
write_image("em.png", image)
np.save("em_truth.npy", label)
image, ids = synthetic_nuclei(np.random.default_rng(0), 256)
write_image("nuclei.tif", image)
np.save("nuclei_truth.npy", ids)
EOF

step "unetile predict --model em-membranes"
quiet "$bin/unetile" predict --model em-membranes --input em.png --out pred-em --device cpu
step "unetile predict --model nuclei-fluorescence --instances"
quiet "$bin/unetile" predict --model nuclei-fluorescence --input nuclei.tif --out pred-nuclei --instances --device cpu

step "checking the predictions (shape, not constant, agree with the synthetic truth)"
"$bin/python" - <<'EOF'
import numpy as np
from unetile.io import read_image

truth = np.load("em_truth.npy")
p = np.squeeze(read_image("pred-em/em.png")).astype(float) / 255
assert p.shape == (256, 256), f"em-membranes: output shape {p.shape}, expected (256, 256)"
assert p.std() > 0.05, f"em-membranes: output is (nearly) constant, std {p.std():.3f}"
contrast = p[truth == 255].mean() - p[truth == 0].mean()
assert contrast > 0.3, f"em-membranes: cells vs membranes differ by only {contrast:.2f} in probability"
print(f"  em-membranes: (256, 256), probability in cells - on membranes = {contrast:.2f}")

truth = np.load("nuclei_truth.npy") > 0
cells = np.squeeze(read_image("pred-nuclei/nuclei.tif"))
assert cells.shape == (256, 256), f"nuclei-fluorescence: output shape {cells.shape}, expected (256, 256)"
count = len(np.unique(cells[cells > 0]))
iou = ((cells > 0) & truth).sum() / max(((cells > 0) | truth).sum(), 1)
assert count >= 5, f"nuclei-fluorescence --instances: {count} cells, expected at least 5"
assert iou > 0.6, f"nuclei-fluorescence: foreground IoU {iou:.2f} with the synthetic truth"
print(f"  nuclei-fluorescence --instances: (256, 256), {count} cells, foreground IoU {iou:.2f}")
EOF

step "a BioImage.IO package's architecture file, generated from the installed modules, runs without unetile"
"$bin/python" - <<'EOF'
import tempfile
from pathlib import Path

import torch

from unetile.nn.checkpoint import load_model
from unetile.packaging.package_architecture import architecture_kwargs, architecture_source, packaged_net
from unetile.packaging.portable_check import run_without_unetile

model, metadata = load_model("nuclei-fluorescence")
packaged = packaged_net(model, metadata)
batch = torch.rand(1, 1, 128, 128)
with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
    (Path(tmp) / "architecture.py").write_text(architecture_source())
    got = run_without_unetile(Path(tmp) / "architecture.py", architecture_kwargs(model, metadata),
                              packaged.state_dict(), batch)
    difference = float((got - packaged(batch)).abs().max())
assert difference < 1e-5, f"the architecture file differs from PackagedNet by {difference}"
print(f"  nuclei-fluorescence: the file alone (python -I, unetile and SciPy refused) = PackagedNet to {difference:.1e}")
EOF

step "napari plugin: npe2 finds the manifest, validates it and imports its commands"
quiet "$bin/npe2" validate --imports unetile
"$bin/python" - <<'EOF'
import inspect, sysconfig
from pathlib import Path

import numpy as np
import npe2

import unetile
from unetile.io import read_image

site = Path(sysconfig.get_paths()["purelib"]).resolve()
pm = npe2.PluginManager.instance()
pm.discover()
found = [m.name for m in pm.iter_manifests()]
assert "unetile" in found, f"npe2 does not find the plugin unetile (found: {found})"
manifest = pm.get_manifest("unetile")
source = Path(manifest._source_file or "").resolve()
assert source.is_relative_to(site), f"the manifest comes from {source}, not the wheel"
assert manifest.package_metadata.version == unetile.__version__, manifest.package_metadata
widgets = {w.display_name: w.command for w in manifest.contributions.widgets}
assert {"Segment", "Train"} <= set(widgets), f"widgets: {widgets}"
writers = [w for w in manifest.contributions.writers if "labels" in w.layer_types]
assert writers, f"no writer of labels layers: {manifest.contributions.writers}"
for command in manifest.contributions.commands:
    target = pm.commands.get(command.id)  # imports python_name, as napari does
    module = Path(inspect.getmodule(target).__file__).resolve()
    assert module.is_relative_to(site), f"{command.python_name} imports from {module}"
write = pm.commands.get(writers[0].command)
labels = np.zeros((32, 32), np.uint16)
labels[4:12, 4:12], labels[20:28, 16:30] = 1, 2
written = write("labels.tif", labels, {})
assert np.array_equal(np.squeeze(read_image(written[0])), labels), "the writer's labels read back differ"
print(f"  {manifest.name} {manifest.package_metadata.version} from {source.parent}: widgets "
      f"{', '.join(widgets)}; writer {writers[0].command}; {len(manifest.contributions.commands)} commands "
      "import from the wheel; labels written and read back")
EOF

step "wheel check passed"
