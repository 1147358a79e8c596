"""Slice-wise inference on whole volumes with a 2D network, under one of two protocols.

A test or prediction volume ``image (C, D, H, W)`` at native resolution is segmented slice by
slice along D at the training size ``S``:

``protocol="default"`` (fast, batched, on the network's device)::

    slices (b, C, H, W)  --bilinear resize-->  (b, C, S, S)  --forward-->  logits (b, K, S, S)
        --argmax-->  labels (b, S, S)  --nearest resize-->  labels (b, H, W)

with ``b <= batch_size`` slices per forward pass. Both resizes put pixel centres on one grid
(``align_corners=False``), the conventions of the default training pipeline
(``datamodules.transforms``):

- images: bilinear, output pixel ``i`` of ``n_out`` sampled at input coordinate
  ``(i + 0.5) n_in / n_out - 0.5``: OpenCV's ``INTER_LINEAR``, the validation transform's
  (values within 3e-5 of OpenCV's, which quantises its weights; up- and downscaling);
- labels: nearest neighbour on pixel centres (``mode="nearest-exact"``: output pixel ``i`` reads
  input pixel ``floor((i + 0.5) n_in / n_out)``): OpenCV's ``INTER_NEAREST_EXACT``, the
  validation transform's mask resize (identical labels). Every output label is a label predicted
  at training size, and an integer upscale by ``f`` repeats each predicted pixel as an
  ``f x f`` block.

``protocol="transunet"`` (TransUNet's ``test_single_volume``, on the CPU with scipy, one slice
per forward pass)::

    slice (H, W) per channel --scipy.ndimage.zoom((S/H, S/W), order=3)--> (S, S)
        --forward (1, C, S, S)--> logits --argmax(softmax)--> (S, S)
        --scipy.ndimage.zoom((H/S, W/S), order=0)--> labels (H, W)

scipy's zoom maps the first and last pixel centres of each axis onto each other (its corner
convention) for both orders, so image and labels stay on one grid there too. The result equals
TransUNet's label map voxel for voxel for the same network and float32 slices.

No resizing happens when a slice already has the training size (both sides, as TransUNet).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = ["INFERENCE_PROTOCOLS", "predict_volume", "resize_images", "resize_labels"]

#: ``protocol`` values of :func:`predict_volume`
INFERENCE_PROTOCOLS = ("default", "transunet")


def _size_pair(size: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    if isinstance(size, bool):
        raise TypeError(f"Expected argument `{name}` to be an int or (H, W), but got {size!r}")
    if isinstance(size, int):
        pair = (size, size)
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        pair = (size[0], size[1])
    else:
        raise TypeError(f"Expected argument `{name}` to be an int or (H, W), but got {size!r}")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in pair):
        raise ValueError(f"Expected argument `{name}` to hold positive ints, but got {size!r}")
    return pair


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize float slices ``(B, C, H, W) -> (B, C, *size)``: bilinear with pixel centres
    aligned (``cv2.INTER_LINEAR``'s coordinates); returned unchanged if already ``size``."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


def resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize integer label maps ``(B, H, W) -> (B, *size)`` by nearest neighbour on pixel
    centres (``floor((i + 0.5) * n_in / n_out)``, ``cv2.INTER_NEAREST_EXACT``); returned
    unchanged if already ``size``."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    # float32 holds every label exactly (labels < 2**24); nearest copies values, never mixes them
    out = F.interpolate(labels[:, None].to(torch.float32), size=size, mode="nearest-exact")
    return out[:, 0].to(labels.dtype)


@torch.no_grad()
def predict_volume(
    forward: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    image_size: int | tuple[int, int] | None,
    batch_size: int = 32,
    protocol: Literal["default", "transunet"] = "default",
) -> torch.Tensor:
    """Segment a volume slice by slice (see the module docstring for the resizing).

    Args:
        forward: the 2D network, ``(b, C, S, S) float -> logits (b, K, S, S)``; it is called
            under ``torch.no_grad()`` and should be in eval mode.
        image: ``(C, D, H, W)`` float volume at native resolution (already intensity
            preprocessed), on the network's device.
        image_size: training size ``S`` (int) or ``(S_h, S_w)``; ``None`` = no resizing
            (slices go in at ``H x W``).
        batch_size: slices per forward pass under ``protocol="default"`` (memory knob; the
            result does not depend on it beyond float reduction order). ``"transunet"``
            forwards one slice at a time, as TransUNet, so that the result cannot depend on
            the batch.
        protocol: ``"default"`` (aligned torch resizes) or ``"transunet"`` (TransUNet's
            scipy zooms and one-slice forward passes), see the module docstring.

    Returns:
        int64 ``(D, H, W)`` labels (argmax over the K classes), on ``image``'s device.

    Raises:
        ValueError: ``image`` is not 4-D or has no slices, ``batch_size < 1``, an unknown
            ``protocol``, or ``forward`` returns a shape other than ``(b, K, S_h, S_w)``.
        TypeError: ``image`` is not a floating-point tensor or ``image_size`` is malformed.
    """
    if not isinstance(image, torch.Tensor) or not image.is_floating_point():
        raise TypeError(
            "Expected argument `image` to be a float tensor (C, D, H, W), but got "
            f"{type(image).__name__}{'' if not isinstance(image, torch.Tensor) else ' ' + str(image.dtype)}"
        )
    if image.ndim != 4 or image.shape[1] == 0:
        raise ValueError(
            f"Expected argument `image` to have shape (C, D, H, W) with D >= 1, but got "
            f"{tuple(image.shape)}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"Expected argument `batch_size` to be an int >= 1, but got {batch_size!r}"
        )
    if protocol not in INFERENCE_PROTOCOLS:
        raise ValueError(
            f"Expected argument `protocol` to be one of {INFERENCE_PROTOCOLS}, but got {protocol!r}"
        )
    _, depth, height, width = image.shape
    size = (height, width) if image_size is None else _size_pair(image_size, "image_size")
    if protocol == "transunet":
        return _predict_volume_transunet(forward, image, size)
    out = torch.empty((depth, height, width), dtype=torch.int64, device=image.device)
    for start in range(0, depth, batch_size):
        stop = min(start + batch_size, depth)
        slices = image[:, start:stop].permute(1, 0, 2, 3)  # (b, C, H, W)
        logits = forward(resize_images(slices, size))
        _check_logits(logits, stop - start, size)
        out[start:stop] = resize_labels(logits.argmax(dim=1), (height, width))
    return out


def _check_logits(logits: torch.Tensor, count: int, size: tuple[int, int]) -> None:
    if logits.ndim != 4 or logits.shape[0] != count or tuple(logits.shape[2:]) != size:
        raise ValueError(
            f"Expected the network to return logits of shape ({count}, K, {size[0]}, "
            f"{size[1]}), but got {tuple(logits.shape)}"
        )


def _predict_volume_transunet(
    forward: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """TransUNet's ``test_single_volume`` for ``image`` (C, D, H, W): see the module docstring."""
    channels, depth, height, width = image.shape
    volume = image.detach().cpu().numpy()
    resize = (height, width) != size
    down = (size[0] / height, size[1] / width)  # TransUNet: patch_size[0] / x, patch_size[1] / y
    up = (height / size[0], width / size[1])  # x / patch_size[0], y / patch_size[1]
    out = np.empty((depth, height, width), dtype=np.int64)
    for z in range(depth):
        planes = [volume[c, z] for c in range(channels)]
        if resize:
            planes = [ndimage.zoom(p, down, order=3) for p in planes]
        net_in = torch.from_numpy(np.stack(planes)[None]).float().to(image.device)
        logits = forward(net_in)
        _check_logits(logits, 1, size)
        labels = torch.argmax(torch.softmax(logits, dim=1), dim=1)[0].cpu().numpy()
        out[z] = ndimage.zoom(labels, up, order=0) if resize else labels
    return torch.from_numpy(out).to(image.device)
