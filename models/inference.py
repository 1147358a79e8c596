"""Slice-wise inference on whole volumes with a 2D network.

A test or prediction volume ``image (C, D, H, W)`` at native resolution is segmented slice by
slice along D, the way the network was trained (TransUNet's test protocol)::

    slices (b, C, H, W)  --bilinear resize-->  (b, C, S, S)  --forward-->  logits (b, K, S, S)
        --argmax-->  labels (b, S, S)  --nearest resize-->  labels (b, H, W)

with ``S`` the training size and ``b <= batch_size`` slices per forward pass.

Resizing conventions (pixel centres aligned, ``align_corners=False``, as the training pipeline's
cv2 / albumentations ``Resize``):

- images: bilinear, the validation transform's interpolation (``cv2.INTER_LINEAR``; it gives
  the same values as ``datamodules``' eval ``Resize`` to float rounding, up- and downscaling);
- labels: nearest neighbour on pixel centres (``mode="nearest-exact"``: output pixel ``i`` of
  ``n_out`` reads input pixel ``floor((i + 0.5) * n_in / n_out)``), so every output label is a
  label predicted at training size, and an integer upscale by ``f`` repeats each predicted
  pixel as an ``f x f`` block.

No resizing happens on a side that already has the training size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["predict_volume", "resize_images", "resize_labels"]


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
    aligned (``cv2.INTER_LINEAR``); returned unchanged if already ``size``."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


def resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize integer label maps ``(B, H, W) -> (B, *size)`` by nearest neighbour on pixel
    centres (``floor((i + 0.5) * n_in / n_out)``); returned unchanged if already ``size``."""
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
) -> torch.Tensor:
    """Segment a volume slice by slice (see the module docstring for the resizing).

    Args:
        forward: the 2D network, ``(b, C, S, S) float -> logits (b, K, S, S)``; it is called
            under ``torch.no_grad()`` and should be in eval mode.
        image: ``(C, D, H, W)`` float volume at native resolution (already intensity
            preprocessed), on the network's device.
        image_size: training size ``S`` (int) or ``(S_h, S_w)``; ``None`` = no resizing
            (slices go in at ``H x W``).
        batch_size: slices per forward pass (memory knob; the result does not depend on it
            beyond float reduction order).

    Returns:
        int64 ``(D, H, W)`` labels (argmax over the K classes), on ``image``'s device.

    Raises:
        ValueError: ``image`` is not 4-D or has no slices, ``batch_size < 1``, or ``forward``
            returns a shape other than ``(b, K, S_h, S_w)``.
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
    _, depth, height, width = image.shape
    size = (height, width) if image_size is None else _size_pair(image_size, "image_size")
    out = torch.empty((depth, height, width), dtype=torch.int64, device=image.device)
    for start in range(0, depth, batch_size):
        stop = min(start + batch_size, depth)
        slices = image[:, start:stop].permute(1, 0, 2, 3)  # (b, C, H, W)
        logits = forward(resize_images(slices, size))
        if logits.ndim != 4 or logits.shape[0] != stop - start or tuple(logits.shape[2:]) != size:
            raise ValueError(
                f"Expected the network to return logits of shape ({stop - start}, K, {size[0]}, "
                f"{size[1]}), but got {tuple(logits.shape)}"
            )
        out[start:stop] = resize_labels(logits.argmax(dim=1), (height, width))
    return out
