import os
import zipfile

import numpy as np
import pytest
import torch

from unetile import Normalization, UserInputError, load_model, predict_tiled, save_model

from .conftest import tiny_unet


def test_round_trip_keeps_config_weights_and_metadata(tmp_path, rng):
    net = tiny_unet(width=4, depth=3, out_channels=2, up_mode="bilinear")
    save_model(net, tmp_path / "m.pt", threshold=0.3, normalization=Normalization(2, 98), note="x")
    back, meta = load_model(tmp_path / "m.pt")
    assert back.config == net.config and not back.training
    for a, b in zip(net.state_dict().values(), back.state_dict().values()):
        assert torch.equal(a, b)
    assert meta["threshold"] == 0.3 and meta["note"] == "x"
    assert Normalization.from_dict(meta["normalization"]) == Normalization(2, 98)
    image = rng.random((40, 40)).astype(np.float32)
    assert np.array_equal(predict_tiled(net, image), predict_tiled(back, image))


def test_default_normalisation_is_recorded(tmp_path):
    save_model(tiny_unet(), tmp_path / "m.pt")
    assert load_model(tmp_path / "m.pt")[1]["normalization"] == Normalization().to_dict()


def test_a_checkpoint_written_before_the_rename_still_loads(tmp_path):
    """Before the package was renamed from `unet`, checkpoints were marked 'unet-checkpoint'."""
    from unetile.nn.checkpoint import model_payload, save_payload

    net = tiny_unet(width=4, depth=2)
    save_payload({**model_payload(net, threshold=0.4), "format": "unet-checkpoint"}, tmp_path / "old.pt")
    back, meta = load_model(tmp_path / "old.pt")
    assert back.config == net.config and meta["threshold"] == 0.4
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), back.state_dict().values()))
    torch.save({**model_payload(net), "format": "other-checkpoint"}, tmp_path / "other.pt")
    with pytest.raises(UserInputError, match="not a U-Net checkpoint"):
        load_model(tmp_path / "other.pt")


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Exploit()
    evil.marker = marker
    torch.save({"format": "unetile-checkpoint", "version": 1, "payload": evil}, tmp_path / "evil.pt")
    assert zipfile.is_zipfile(tmp_path / "evil.pt")
    with pytest.raises(UserInputError, match="refused"):
        load_model(tmp_path / "evil.pt")
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a checkpoint", "not a checkpoint"),
        (None, "not a U-Net checkpoint"),  # a valid torch file of something else
    ],
)
def test_not_a_checkpoint(tmp_path, content, message):
    path = tmp_path / "x.pt"
    if content is None:
        torch.save({"weights": torch.zeros(3)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(UserInputError, match=message):
        load_model(path)


def test_truncated_checkpoint(tmp_path):
    save_model(tiny_unet(), tmp_path / "m.pt")
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "m.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserInputError, match="m.pt"):
        load_model(tmp_path / "m.pt")


def test_weights_of_another_architecture(tmp_path):
    save_model(tiny_unet(width=4), tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    payload["config"]["width"] = 8
    torch.save(payload, tmp_path / "m.pt")
    with pytest.raises(UserInputError, match="does not match its architecture"):
        load_model(tmp_path / "m.pt")


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    save_model(tiny_unet(), tmp_path / "m.pt")
    save_model(tiny_unet(seed=1), tmp_path / "m.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]
