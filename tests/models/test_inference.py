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


# ------------------------------------------------------------------ pixel grid, both protocols
def test_default_resizes_are_the_validation_transforms() -> None:
    """The test path's resizes use the training pipeline's conventions: labels exactly the
    validation transform's mask (OpenCV INTER_NEAREST_EXACT), images its bilinear resize."""
    from datamodules.transforms import build_eval_transform

    rng = np.random.default_rng(4)
    for (h, w), s in [((300, 437), 224), ((37, 51), 64)]:
        label = rng.integers(0, 9, (h, w)).astype(np.uint8)
        image = rng.random((h, w)).astype(np.float32)
        out = build_eval_transform(s)(image=image[:, :, None], mask=label)
        ours = resize_labels(torch.from_numpy(label.astype(np.int64))[None], (s, s))[0]
        np.testing.assert_array_equal(ours.numpy(), out["mask"])
        ours_img = resize_images(torch.from_numpy(image)[None, None], (s, s))[0, 0]
        # OpenCV quantises its bilinear weights: equal within 3e-5
        np.testing.assert_allclose(ours_img.numpy(), out["image"][:, :, 0], atol=5e-5)


@pytest.mark.parametrize("protocol", ["default", "transunet"])
def test_masks_come_back_on_their_own_grid(protocol: str) -> None:
    """A mask-shaped volume through a thresholding 'network' at 224: the predicted labels lie
    on the mask at native resolution (non-square 300x437 slices) up to the boundary's
    quantisation (2 native pixels per label pixel). Centroid offsets measured: 0.03-0.31
    native pixels for both protocols, 0.60-0.84 with corner-convention nearest labels."""
    from tests.datamodules.test_transforms import blob_mask, grid_agreement

    masks = np.stack([blob_mask(300, 437, seed, 2, (0.1, 0.25)) for seed in range(6)])
    image = torch.from_numpy(masks.astype(np.float32))[None]  # (1, D, H, W)
    out = predict_volume(threshold_net, image, 224, batch_size=4, protocol=protocol).numpy()
    results = [grid_agreement(out[z].astype(np.float32), masks[z]) for z in range(6)]
    offsets, fractions, near = zip(*results, strict=True)
    assert all(near), results
    assert np.mean(offsets) < 0.3 and max(offsets) < 0.45, offsets
    assert np.mean(fractions) < 0.18, fractions


# ------------------------------------------------------------------ transunet protocol
def transunet_test_single_volume(net: nn.Module, image: np.ndarray, patch: int) -> np.ndarray:
    """TransUNet's ``test_single_volume`` label map, re-derived here with the scipy calls it
    makes: per slice zoom(slice, (patch / x, patch / y), order=3), one forward pass,
    argmax(softmax), zoom(out, (x / patch, y / patch), order=0). Channels zoomed one by one."""
    from scipy.ndimage import zoom

    _, depth, x, y = image.shape
    prediction = np.zeros((depth, x, y), dtype=np.int64)
    for ind in range(depth):
        planes = list(image[:, ind])
        if x != patch or y != patch:
            planes = [zoom(p, (patch / x, patch / y), order=3) for p in planes]
        inp = torch.from_numpy(np.stack(planes)).unsqueeze(0).float()
        with torch.no_grad():
            out = torch.argmax(torch.softmax(net(inp), dim=1), dim=1).squeeze(0).numpy()
        if x != patch or y != patch:
            prediction[ind] = zoom(out, (x / patch, y / patch), order=0)
        else:
            prediction[ind] = out
    return prediction


@pytest.mark.parametrize(
    ("channels", "hw", "patch"),
    [(1, (37, 53), 32), (2, (45, 29), 24), (1, (32, 47), 32), (1, (20, 20), 20)],
)
def test_transunet_protocol_is_test_single_volume_voxel_for_voxel(channels, hw, patch) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(channels, 8, 5, padding=2), nn.Tanh(), nn.Conv2d(8, 5, 3, padding=1)
    )
    net.eval()
    rng = np.random.default_rng(5)
    volume = rng.normal(size=(channels, 4, *hw)).astype(np.float32)
    calls: list[tuple[int, ...]] = []

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return net(x)

    out = predict_volume(
        counted, torch.from_numpy(volume), patch, batch_size=3, protocol="transunet"
    )
    assert out.shape == (4, *hw) and out.dtype == torch.int64
    reference = transunet_test_single_volume(net, volume, patch)
    np.testing.assert_array_equal(out.numpy(), reference)
    assert calls == [(1, channels, patch, patch)] * 4  # one slice per forward pass
    assert len(np.unique(reference)) >= 3  # the check sees several classes


def test_transunet_and_default_protocols_differ() -> None:
    """Cubic zoom with the corner convention vs bilinear on pixel centres: not the same map."""
    torch.manual_seed(1)
    net = nn.Conv2d(1, 3, 3, padding=1).eval()
    volume = torch.randn(1, 2, 37, 53, generator=torch.Generator().manual_seed(2))
    a = predict_volume(net, volume, 32, protocol="default")
    b = predict_volume(net, volume, 32, protocol="transunet")
    assert not torch.equal(a, b)


def test_unknown_protocol_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"`protocol`.*'nnunet'"):
        predict_volume(threshold_net, torch.zeros(1, 2, 4, 4), 4, protocol="nnunet")
