"""Interruptions lose nothing: SIGKILL mid-save, SIGINT mid-training, NaN losses."""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from unetile import load_model, save_model
from unetile.cli import main
from unetile.synthetic import write_dataset

from .conftest import tiny_unet

SAVER = """
import sys, torch
from unetile import UNet, save_model
net = UNet(width=48)  # ~70 MB of weights: each save takes a while
path = sys.argv[1]
print("ready", flush=True)
i = 0
while True:
    i += 1
    with torch.no_grad():
        next(net.parameters()).fill_(i)
    save_model(net, path, generation=i)
"""


def test_sigkill_during_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_model(tiny_unet(), path, generation=0)
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ready"
    # Let a few saves complete, then kill at a moment that is most likely mid-write.
    deadline = time.time() + 60
    while time.time() < deadline:
        if load_model(path)[1].get("generation", 0) >= 2:
            break
        time.sleep(0.05)
    time.sleep(0.13)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    model, meta = load_model(path)  # intact: a complete earlier or the latest generation
    assert meta["generation"] >= 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # The next save sweeps away any temporary file the killed writer left.
    save_model(tiny_unet(), path, generation=-1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("syn"), 4, 48, seed=0)


def _train_argv(data, out, *extra):
    return [sys.executable, "-m", "unetile", "train", "--data", str(data), "--out", str(out), "--width", "4",
            "--depth", "2", "--tile-size", "76", "--batch-size", "2", "--samples-per-epoch", "2", "--precision",
            "fp32", "--workers", "0", "--no-calibrate-tta", *extra]


def test_sigint_saves_last_and_resume_finishes(tmp_path, data):
    out = tmp_path / "run"
    proc = subprocess.Popen(_train_argv(data, out, "--epochs", "100000"), stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.1)
    assert (out / "last.pt").exists()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "resume with --resume" in err and "Traceback" not in err
    payload = torch.load(out / "last.pt", weights_only=True)
    stopped_at = payload["training"]["step"]
    assert stopped_at >= 1
    # Resume (with a lower epoch target, so it ends) continues from that step.
    done = subprocess.run([sys.executable, "-m", "unetile", "train", "--resume", str(out), "--epochs",
                           str(payload["training"]["epoch"] + 2)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert torch.load(out / "last.pt", weights_only=True)["training"]["step"] > stopped_at


def test_nonfinite_loss_stops_cleanly_and_never_saves_nan_weights(tmp_path, data, capsys):
    out = tmp_path / "run"
    argv = _train_argv(data, out, "--epochs", "30", "--lr", "1e12", "--optimizer", "sgd", "--momentum", "0")[3:]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and ("the loss became" in err or "non-finite" in err)
    for name in ("best.pt", "last.pt"):
        if (out / name).exists():
            model, _ = load_model(out / name)
            assert all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point())


def test_skip_nonfinite_keeps_going(tmp_path, data, monkeypatch):
    import unetile.training.loop as train_module

    calls = {"n": 0}
    real = train_module.segmentation_loss

    def sometimes_nan(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(train_module, "segmentation_loss", sometimes_nan)
    argv = _train_argv(data, tmp_path / "run", "--epochs", "2", "--skip-nonfinite", "--samples-per-epoch", "6")[3:]
    assert main(argv) == 0
    model, _ = load_model(tmp_path / "run" / "best.pt")
    assert all(np.isfinite(t.numpy()).all() for t in model.state_dict().values() if t.is_floating_point())
