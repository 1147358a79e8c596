"""Slice-wise volume inference: shapes, resizing (cv2 / hand references), batching."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from models.inference import predict_volume, resize_images, resize_labels


def threshold_net(x: torch.Tensor) -> torch.Tensor:
    """Two-class 'network': class 1 where channel 0 > 0.5 (logits (b, 2, H, W))."""
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, :1] - 0.5], dim=1)


class FixedMapNet:
    """Ignores its input; predicts the label map ``labels`` (S, S) for every slice, recording
    the shapes it was called with."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = torch.from_numpy(labels).long()
        self.num_classes = int(labels.max()) + 1
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        onehot = nn.functional.one_hot(self.labels, self.num_classes).permute(2, 0, 1).float()
        return onehot[None].expand(x.shape[0], -1, -1, -1).clone()


def test_output_shape_dtype_and_identity_without_resize() -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 5, 12, 10, generator=g)
    out = predict_volume(threshold_net, image, image_size=None, batch_size=2)
    assert out.shape == (5, 12, 10) and out.dtype == torch.int64
    # no resizing: the hand-computed threshold of channel 0, slice by slice
    np.testing.assert_array_equal(out.numpy(), (image[0].numpy() > 0.5).astype(np.int64))
    # same size given explicitly: still no resizing
    same = predict_volume(threshold_net, image, image_size=(12, 10), batch_size=3)
    assert torch.equal(out, same)


@pytest.mark.parametrize("out_hw", [(8, 8), (8, 12), (6, 3), (4, 4)])
def test_labels_come_back_by_nearest_on_pixel_centres(out_hw: tuple[int, int]) -> None:
    s = 4
    labels = np.arange(s * s).reshape(s, s) % 7  # distinct-enough pattern, 7 classes
    net = FixedMapNet(labels)
    h, w = out_hw
    out = predict_volume(net, torch.zeros(1, 3, h, w), image_size=s, batch_size=8).numpy()
    # hand reference: output pixel i reads input pixel floor((i + 0.5) * n_in / n_out)
    rows = np.floor((np.arange(h) + 0.5) * s / h).astype(int)
    cols = np.floor((np.arange(w) + 0.5) * s / w).astype(int)
    expected = labels[np.ix_(rows, cols)]
    for z in range(3):
        np.testing.assert_array_equal(out[z], expected)
    assert net.calls == [(3, 1, s, s)]


def test_integer_upscale_repeats_each_pixel_as_a_block() -> None:
    labels = np.array([[0, 1], [2, 3]])
    out = predict_volume(FixedMapNet(labels), torch.zeros(1, 1, 6, 6), image_size=2).numpy()
    np.testing.assert_array_equal(out[0], np.kron(labels, np.ones((3, 3), dtype=int)))


def test_images_reach_the_network_resized_like_cv2_inter_linear() -> None:
    rng = np.random.default_rng(1)
    volume = rng.random((2, 3, 37, 51)).astype(np.float32)  # (C, D, H, W)
    seen: list[torch.Tensor] = []

    def spy(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return torch.zeros(x.shape[0], 2, *x.shape[2:])

    predict_volume(spy, torch.from_numpy(volume), image_size=32, batch_size=2)
    got = torch.cat(seen).numpy()  # (D, C, 32, 32)
    assert got.shape == (3, 2, 32, 32)
    for z in range(3):
        for c in range(2):
            ref = cv2.resize(volume[c, z], (32, 32), interpolation=cv2.INTER_LINEAR)
            np.testing.assert_allclose(got[z, c], ref, atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 3, 7, 100])
def test_result_does_not_depend_on_batching(batch_size: int) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    image = torch.randn(2, 7, 20, 24, generator=torch.Generator().manual_seed(3))
    calls: list[int] = []

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return net(x)

    reference = torch.stack(
        [
            net(nn.functional.interpolate(image[:, z][None], size=(16, 16), mode="bilinear"))[
                0
            ].argmax(0)
            for z in range(7)
        ]
    )  # (D, 16, 16): one slice at a time, at training size
    out = predict_volume(counted, image, image_size=16, batch_size=batch_size)
    assert out.shape == (7, 20, 24)
    assert calls == [min(batch_size, 7 - i) for i in range(0, 7, batch_size)]
    np.testing.assert_array_equal(out.numpy(), resize_labels(reference, (20, 24)).numpy())


def test_resize_helpers_are_identity_at_the_same_size() -> None:
    x = torch.rand(2, 3, 5, 6)
    assert resize_images(x, (5, 6)) is x
    y = torch.randint(0, 4, (2, 5, 6))
    assert resize_labels(y, (5, 6)) is y
    assert resize_labels(y, (10, 12)).dtype == y.dtype


@pytest.mark.parametrize(
    ("image", "kwargs", "error", "match"),
    [
        (torch.zeros(3, 4, 5), {}, ValueError, r"shape \(C, D, H, W\)"),
        (torch.zeros(1, 0, 4, 4), {}, ValueError, "D >= 1"),
        (torch.zeros(1, 2, 4, 4, dtype=torch.int64), {}, TypeError, "float tensor"),
        (np.zeros((1, 2, 4, 4), dtype=np.float32), {}, TypeError, "float tensor"),
        (torch.zeros(1, 2, 4, 4), {"batch_size": 0}, ValueError, "batch_size"),
        (torch.zeros(1, 2, 4, 4), {"image_size": 0}, ValueError, "image_size"),
        (torch.zeros(1, 2, 4, 4), {"image_size": (4, 4, 4)}, TypeError, "image_size"),
    ],
)
def test_bad_arguments(image, kwargs, error, match) -> None:
    args = {"image_size": None, "batch_size": 4, **kwargs}
    with pytest.raises(error, match=match):
        predict_volume(threshold_net, image, **args)


def test_network_output_shape_is_checked() -> None:
    def wrong(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 2, 3, 3)

    with pytest.raises(ValueError, match=r"logits of shape \(2, K, 8, 8\)"):
        predict_volume(wrong, torch.zeros(1, 2, 5, 5), image_size=8)
