"""DistributedDataParallel under torchrun, on the CPU with gloo (2 processes)."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from unetile.synthetic import write_dataset
from unetile.training import TrainConfig, train

COMMON = ["--width", "4", "--depth", "2", "--tile-size", "76", "--samples-per-epoch", "8", "--epochs", "3",
          "--precision", "fp32", "--workers", "0", "--no-calibrate-tta", "--no-batch-norm", "--dropout", "0",
          "--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9", "--device", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("syn"), 5, 64, seed=0)


def torchrun(args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                             "-m", "unetile", *args], env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            **kw)


def losses(run):
    with open(run / "metrics.csv") as f:
        return [float(r["train_loss"]) for r in csv.DictReader(f)]


def test_two_processes_equal_one_process_with_twice_the_batch(tmp_path, data):
    torch.set_num_threads(1)
    one = train(TrainConfig(out=str(tmp_path / "one"), data=str(data), width=4, depth=2, tile_size=76,
                            samples_per_epoch=8, epochs=3, precision="fp32", workers=0, calibrate_tta=False,
                            batch_norm=False, dropout=0.0, optimizer="sgd", lr=0.05, momentum=0.9, batch_size=4, device="cpu"))
    proc = torchrun(["train", "--data", str(data), "--out", str(tmp_path / "two"), "--batch-size", "2", *COMMON])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert losses(one) == pytest.approx(losses(tmp_path / "two"), rel=1e-4)
    a = torch.load(one / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "two" / "last.pt", weights_only=True)["state_dict"]
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    assert (tmp_path / "two" / "best.pt").exists() and not any((tmp_path / "two").glob("*.part*"))


def test_a_dying_rank_ends_the_job_and_leaves_a_resumable_run(tmp_path, data):
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(run), "--batch-size", "2", *COMMON, "--epochs", "100000",
            "--dist-timeout", "30"]
    proc = torchrun(args)
    deadline = time.time() + 180
    while not (run / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert (run / "last.pt").exists()
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2
    os.kill(int(workers[-1]), signal.SIGKILL)
    _, err = proc.communicate(timeout=180)  # ends, does not hang
    assert proc.returncode != 0
    assert "fail" in err.lower()
    resumed = subprocess.run([sys.executable, "-m", "unetile", "train", "--resume", str(run), "--epochs",
                              str(torch.load(run / "last.pt", weights_only=True)["training"]["epoch"] + 1)],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]


def test_prediction_split_across_two_processes_equals_one(tmp_path, data):
    import numpy as np
    import tifffile

    from unetile import save_model
    from unetile.io import read_image, write_image

    from .conftest import tiny_unet

    model = tmp_path / "m.pt"
    save_model(tiny_unet(width=4, depth=3), model)
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    tifffile.imwrite(src / "vol.tif", (rng.random((5, 90, 70)) * 255).astype(np.uint8), photometric="minisblack")
    for name in ("a", "b", "c"):
        write_image(src / f"{name}.png", (rng.random((40, 50)) * 255).astype(np.uint8))
    common = ["predict", "--model", str(model), "--input", str(src), "--precision", "fp32", "--tile-size", "124",
              "--device", "cpu"]
    # The same thread count as each torchrun worker, so that the kernels are the same.
    single = subprocess.run([sys.executable, "-m", "unetile", *common, "--out", str(tmp_path / "one")],
                            capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert single.returncode == 0, single.stderr[-2000:]
    proc = torchrun([*common, "--out", str(tmp_path / "two")])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir()) == ["a.png", "b.png", "c.png", "vol.tif"]
    for name in names:
        assert np.array_equal(read_image(tmp_path / "one" / name), read_image(tmp_path / "two" / name)), name


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch, tmp_path, capsys):
    from unetile.cli import main
    from unetile.distributed import check_gpus
    from unetile.errors import UserInputError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_gpus(1, torch.device("cuda"))
    check_gpus(4, torch.device("cpu"))
    with pytest.raises(UserInputError, match="2 processes need one GPU each, but this machine has 1"):
        check_gpus(2, torch.device("cuda"))
    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--devices", "2"])
    assert code == 2 and "--devices 1" in capsys.readouterr().err and not (tmp_path / "run").exists()
    # Resuming a CPU run: the run's own device counts, so torchrun is started.
    import json

    import unetile.distributed

    launched = []
    monkeypatch.setattr(unetile.distributed, "launch", lambda n, argv: launched.append(n) or 0)
    (tmp_path / "cpu_run").mkdir()
    (tmp_path / "cpu_run" / "config.json").write_text(json.dumps({"train": {"device": "cpu"}}))
    assert main(["train", "--resume", str(tmp_path / "cpu_run"), "--devices", "2"]) == 0 and launched == [2]
