"""Slice transforms of the training and validation loaders (albumentations).

Each transform takes one (H, W, C) float32 slice and its (H, W) uint8 mask and returns both
resized to (S, S); see ``datamodules.hdf5.SliceDataset``.
"""

from __future__ import annotations

import albumentations as A
import cv2

__all__ = ["build_eval_transform", "build_train_transform"]

cv2.setNumThreads(1)  # one thread per DataLoader worker; cv2's pool oversubscribes the cores


def build_train_transform(image_size: int) -> A.Compose:
    """Training augmentation on one (H, W, C) slice and its (H, W) mask.

    Resize first (cheap rotations at the small size), then TransUNet's augmentation: with
    probability 0.5 a random 90-degree rotation followed by a flip (a uniformly random
    reflection of the square), otherwise with probability 0.5 a rotation by an angle in
    [-20, 20] degrees (bilinear image, nearest mask, zero fill). Images use bilinear
    interpolation , masks nearest neighbour.
    """
    return A.Compose(
        [
            A.Resize(
                image_size,
                image_size,
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
            ),
            A.OneOf(
                [
                    A.Sequential([A.RandomRotate90(p=1.0), A.HorizontalFlip(p=1.0)], p=1.0),
                    A.Rotate(
                        limit=20,
                        interpolation=cv2.INTER_LINEAR,
                        mask_interpolation=cv2.INTER_NEAREST,
                        border_mode=cv2.BORDER_CONSTANT,
                        fill=0,
                        fill_mask=0,
                        p=0.5,
                    ),
                ],
                # OneOf picks a child with probability proportional to the child's p and then
                # forces it: weights 1.0 : 0.5 -> P(rot90+flip) = 0.75 * 2/3 = 0.5,
                # P(rotate) = 0.75 * 1/3 = 0.25, P(neither) = 0.25, as in TransUNet.
                p=0.75,
            ),
        ]
    )


def build_eval_transform(image_size: int) -> A.Compose:
    """Validation transform: resize only (bilinear image, nearest mask)."""
    return A.Compose(
        [
            A.Resize(
                image_size,
                image_size,
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
            )
        ]
    )
