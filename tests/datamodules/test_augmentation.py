"""TransUNet's augmentation probabilities, measured on an asymmetric image."""

from __future__ import annotations

import numpy as np

from datamodules.transforms import build_train_transform


def test_train_augmentation_follows_transunet_probabilities():
    size = 32
    image = np.arange(size * size, dtype=np.float32).reshape(size, size, 1) / size**2
    mask = (np.arange(size * size).reshape(size, size) % 7).astype(np.uint8)
    transform = build_train_transform(size)
    transform.set_random_seed(0)
    reflections = [np.flip(np.rot90(image[:, :, 0], k), 1) for k in range(4)]
    counts = {"identity": 0, "rot90+flip": 0, "rotation": 0}
    trials = 600
    for _ in range(trials):
        out = transform(image=image, mask=mask)["image"][:, :, 0]
        if np.array_equal(out, image[:, :, 0]):
            counts["identity"] += 1
        elif any(np.array_equal(out, r) for r in reflections):
            counts["rot90+flip"] += 1
        else:
            counts["rotation"] += 1
    # TransUNet: p=0.5 rot90 + flip, else p=0.5 rotation in [-20, 20] degrees
    assert abs(counts["rot90+flip"] / trials - 0.5) < 0.07, counts
    assert abs(counts["rotation"] / trials - 0.25) < 0.07, counts
    assert abs(counts["identity"] / trials - 0.25) < 0.07, counts
