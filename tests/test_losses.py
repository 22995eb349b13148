import pytest
import torch

from unetile.training.losses import segmentation_loss, skeleton_recall_loss


def _gap_case():
    """A 40-px vertical membrane (class 0) between two cells, and its one-pixel skeleton."""
    target = torch.ones(1, 40, 9, dtype=torch.int64)
    target[:, :, 3:6] = 0
    skeleton = torch.zeros(1, 40, 9)
    skeleton[:, :, 4] = 1
    return target, skeleton


def test_skeleton_recall_by_hand():
    target, skeleton = _gap_case()
    background = (target == 0).float()
    assert float(skeleton_recall_loss(background, skeleton)) == pytest.approx(0.0)
    # Close the gap over 3 rows: 37 of 40 skeleton pixels are still called background.
    closed = background.clone()
    closed[:, 10:13, :] = 0
    assert float(skeleton_recall_loss(closed, skeleton)) == pytest.approx(1 - (37 + 1) / (40 + 1))


def test_skeleton_recall_term_in_the_loss_ignores_masked_pixels_and_has_gradients():
    target, skeleton = _gap_case()
    logits = torch.where(target > 0, 8.0, -8.0)[:, None].requires_grad_()
    weight = torch.ones(1, 40, 9)
    base = segmentation_loss(logits, target, weight, "weighted-ce")
    with_term = segmentation_loss(logits, target, weight, "weighted-ce", skeleton, 2.0)
    assert float(with_term - base) == pytest.approx(0.0, abs=1e-3)  # the gap is open: recall ~1
    with_term.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    closed = logits.detach().clone()
    closed[:, 0, 10:13, :] = 8.0  # three rows of the gap called cell
    extra = segmentation_loss(closed, target, weight, "weighted-ce", skeleton, 2.0) \
        - segmentation_loss(closed, target, weight, "weighted-ce")
    assert float(extra) == pytest.approx(2.0 * (1 - (37 + 1) / (40 + 1)), abs=1e-3)
    weight[:, 10:13, :] = 0  # those rows outside the image: they no longer count
    masked = segmentation_loss(closed, target, weight, "weighted-ce", skeleton, 2.0) \
        - segmentation_loss(closed, target, weight, "weighted-ce")
    assert float(masked) == pytest.approx(0.0, abs=1e-3)


def test_skeleton_recall_with_several_classes_uses_class_zero():
    target, skeleton = _gap_case()
    logits = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 10
    weight = torch.ones(1, 40, 9)
    loss = segmentation_loss(logits, target, weight, "ce", skeleton, 1.0) - segmentation_loss(logits, target, weight, "ce")
    assert float(loss) == pytest.approx(0.0, abs=1e-3)
    logits[:, :, 10:13, :] = torch.tensor([0.0, 10.0, 0.0])[:, None, None]  # three rows called class 1
    loss = segmentation_loss(logits, target, weight, "ce", skeleton, 1.0) - segmentation_loss(logits, target, weight, "ce")
    assert float(loss) == pytest.approx(1 - (37 + 1) / (40 + 1), abs=1e-3)


def test_skeleton_recall_of_a_batch_is_the_mean_of_its_halves():
    # What DDP relies on: two processes averaging their halves give the whole batch's value.
    gen = torch.Generator().manual_seed(0)
    background = torch.rand(4, 16, 16, generator=gen)
    skeleton = (torch.rand(4, 16, 16, generator=gen) > 0.8).float()
    whole = skeleton_recall_loss(background, skeleton)
    halves = (skeleton_recall_loss(background[:2], skeleton[:2]) + skeleton_recall_loss(background[2:], skeleton[2:])) / 2
    assert float(whole) == pytest.approx(float(halves), rel=1e-6)


def test_skeleton_recall_without_a_skeleton_is_an_error():
    target, _ = _gap_case()
    with pytest.raises(ValueError, match="skeleton"):
        segmentation_loss(torch.zeros(1, 1, 40, 9), target, torch.ones(1, 40, 9), "bce", None, 1.0)


def test_flow_loss_weighs_the_cell_and_the_flows_by_the_weight():
    """Doubling a pixel's weight doubles both its cross entropy and its flow error; weight 0
    removes both (a flows net's sparse labels and small-cell weights)."""
    torch.manual_seed(0)
    logits, target = torch.randn(1, 3, 4, 4), torch.rand(1, 3, 4, 4)
    target[:, 0] = (target[:, 0] > 0.5).float()
    ones = torch.ones(1, 4, 4)
    heavy = ones.clone()
    heavy[0, 1, 2] = 3.0
    def loss(weight: torch.Tensor) -> float:
        return segmentation_loss(logits, target, weight, "weighted-ce").item()

    only = torch.zeros(1, 4, 4)
    only[0, 1, 2] = 1.0
    assert loss(heavy) - loss(ones) == pytest.approx(2 * loss(only), rel=1e-5)
    assert loss(torch.zeros(1, 4, 4)) == 0.0
