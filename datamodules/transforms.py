"""Slice transforms of the training and validation loaders, one pair per protocol.

Each transform is called as ``transform(image=(H, W, C) float32, mask=(H, W) uint8)`` and
returns ``{"image": (S, S, C) float32, "mask": (S, S) uint8}``; ``set_random_seed(seed)`` reseeds
its random draws (``datamodules.hdf5.SliceDataset`` calls it in every worker process).

Every step keeps the image and the mask on one pixel grid: a mask-shaped image (the float of the
mask) thresholded at 0.5 after the transform agrees with the transformed mask up to interpolation
at the boundary, whatever the slice's shape.

``protocol="default"`` (albumentations / OpenCV, fast): resize to ``S x S`` first, then augment
the small slice. OpenCV's ``INTER_LINEAR`` samples output pixel ``i`` of ``n_out`` at input
coordinate ``(i + 0.5) n_in / n_out - 0.5`` (pixel centres aligned); the mask is resized with
``INTER_NEAREST_EXACT``, which reads input pixel ``floor((i + 0.5) n_in / n_out)``, the pixel
nearest to the same coordinate (OpenCV's plain ``INTER_NEAREST`` reads
``floor(i n_in / n_out)``, the corner convention: on average ``n_in / (2 n_out)`` input pixels
earlier, which moves the mask half an output pixel away from the origin along each axis,
relative to the image). Rotations warp image (bilinear) and
mask (``INTER_NEAREST``, which rounds the sampling coordinate in ``warpAffine``) with one affine
matrix; 90-degree rotations and flips are exact.

``protocol="transunet"`` (scipy, TransUNet's ``RandomGenerator`` step by step, at the stored
resolution): with probability 0.5 ``np.rot90`` by ``k`` in {0, 1, 2, 3} then ``np.flip`` along a
random axis; else with probability 0.5 ``scipy.ndimage.rotate(angle, order=0, reshape=False)``
of image and mask by an integer ``angle`` in [-20, 19] (zero fill); then
``scipy.ndimage.zoom`` by ``(S / H, S / W)`` to ``S x S``, image ``order=3``, mask ``order=0``
(scipy's zoom maps the first and last pixel centres onto each other for both orders). The
nearest-neighbour steps (the rotation and the mask's zoom) are applied through index maps that
scipy computes once per shape and angle, which reproduce scipy's result exactly (checked in
``tests/datamodules/test_transforms.py``) at a fraction of the cost.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal, Protocol

import albumentations as A
import cv2
import numpy as np
from scipy import ndimage

__all__ = [
    "PROTOCOLS",
    "AlignedResizeThen",
    "DataProtocol",
    "SliceTransform",
    "TransUNetTransform",
    "build_eval_transform",
    "build_train_transform",
    "check_protocol",
]

cv2.setNumThreads(1)  # one thread per DataLoader worker; cv2's pool oversubscribes the cores

#: data protocols: ``default`` (aligned OpenCV pipeline) and ``transunet`` (TransUNet's code)
PROTOCOLS = ("default", "transunet")
DataProtocol = Literal["default", "transunet"]


class SliceTransform(Protocol):
    """What ``SliceDataset`` needs of a transform (albumentations' ``Compose`` fits)."""

    def __call__(self, *, image: np.ndarray, mask: np.ndarray) -> dict[str, Any]: ...

    def set_random_seed(self, seed: int) -> None: ...


def check_protocol(protocol: Any, name: str = "protocol") -> str:
    """Return ``protocol`` if it is one of :data:`PROTOCOLS`, else raise ``ValueError``."""
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"Expected argument `{name}` to be one of {PROTOCOLS}, but got {protocol!r}"
        )
    return protocol


def _check_size(image_size: Any) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(
            f"Expected argument `image_size` to be an int >= 1, but got {image_size!r}"
        )
    return image_size


class AlignedResizeThen:
    """``protocol="default"``: the aligned resize to ``S x S`` (bilinear image,
    ``INTER_NEAREST_EXACT`` mask, as ``A.Resize`` with these flags computes it), then
    ``augment`` (an albumentations pipeline at ``S x S``; ``None``: resize only).

    An (H, W, C) image that is a channels-last view of (C, H, W) planes (what
    ``SliceDataset`` passes) is resized plane by plane without interleaving the full-size
    planes first: OpenCV copies a non-contiguous array element by element (0.8 ms of a 2- or
    3-channel 512 x 512 slice), albumentations makes every input contiguous.
    """

    def __init__(self, image_size: int, augment: A.Compose | None = None) -> None:
        self.image_size = _check_size(image_size)
        self.augment = augment

    def set_random_seed(self, seed: int) -> None:
        """Reseed the augmentation's random draws."""
        if self.augment is not None:
            self.augment.set_random_seed(seed)

    def __repr__(self) -> str:
        return f"AlignedResizeThen(image_size={self.image_size}, augment={self.augment!r})"

    def __call__(self, *, image: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        """``image`` (H, W) or (H, W, C), ``mask`` (H, W) -> ``{"image": (S, S[, C]),
        "mask": (S, S)}`` (dtypes kept)."""
        if image.shape[:2] != mask.shape or mask.ndim != 2:
            raise ValueError(
                f"Expected `image` (H, W[, C]) and `mask` (H, W) of one size, but got "
                f"{image.shape} and {mask.shape}"
            )
        s = self.image_size
        if mask.shape != (s, s):
            mask = cv2.resize(mask, (s, s), interpolation=cv2.INTER_NEAREST_EXACT)
            if image.ndim == 2 or image.flags.c_contiguous:
                resized = cv2.resize(image, (s, s), interpolation=cv2.INTER_LINEAR)
                image = resized.reshape(s, s, *image.shape[2:])  # cv2 drops a last axis of 1
            else:
                planes = [np.ascontiguousarray(image[:, :, c]) for c in range(image.shape[2])]
                image = np.stack(
                    [cv2.resize(p, (s, s), interpolation=cv2.INTER_LINEAR) for p in planes], -1
                )
        if self.augment is None:
            return {"image": image, "mask": mask}
        return self.augment(image=image, mask=mask)


def build_train_transform(image_size: int, protocol: DataProtocol = "default") -> SliceTransform:
    """Training augmentation of one (H, W, C) slice and its (H, W) mask, output (S, S).

    ``default``: resize first (cheap rotations at the small size), then TransUNet's
    augmentation: with probability 0.5 a random 90-degree rotation followed by a flip (a
    uniformly random reflection of the square), otherwise with probability 0.5 a rotation by an
    angle uniform in [-20, 20] degrees (bilinear image, nearest mask, zero fill).
    ``transunet``: :class:`TransUNetTransform` with ``augment=True``.
    See the module docstring for the pixel conventions.
    """
    size = _check_size(image_size)
    if check_protocol(protocol) == "transunet":
        return TransUNetTransform(size, augment=True)
    augment = A.Compose(
        [
            A.OneOf(
                [
                    A.Sequential([A.RandomRotate90(p=1.0), A.HorizontalFlip(p=1.0)], p=1.0),
                    A.Rotate(
                        limit=20,
                        interpolation=cv2.INTER_LINEAR,
                        # warpAffine's INTER_NEAREST rounds the sampling coordinate (aligned)
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
    return AlignedResizeThen(size, augment)


def build_eval_transform(image_size: int, protocol: DataProtocol = "default") -> SliceTransform:
    """Validation transform, resize only: ``default`` bilinear image and centre-aligned nearest
    mask (OpenCV); ``transunet`` scipy zoom, image ``order=3``, mask ``order=0``."""
    size = _check_size(image_size)
    if check_protocol(protocol) == "transunet":
        return TransUNetTransform(size, augment=False)
    return AlignedResizeThen(size)


# ------------------------------------------------------------------------------ transunet
def _index_dtype(n: int) -> type:
    """int32 indices where they fit (halves the cached maps), else int64."""
    return np.int32 if n < 2**31 else np.int64


@lru_cache(maxsize=96)
def _rotation_index(shape: tuple[int, int], angle: int) -> np.ndarray:
    """Flat source index + 1 (0 = outside, zero fill) of every output pixel of
    ``scipy.ndimage.rotate(x, angle, order=0, reshape=False)`` for an (H, W) ``x``: scipy
    rotates the array of indices itself, so the selection is scipy's, exactly."""
    h, w = shape
    index = np.arange(1, h * w + 1, dtype=np.float64).reshape(h, w)
    out = ndimage.rotate(index, angle, order=0, reshape=False, mode="constant", cval=0.0)
    return out.astype(_index_dtype(h * w + 1))


@lru_cache(maxsize=256)
def _zoom_index(shape: tuple[int, int], size: int) -> np.ndarray:
    """Flat source index + 1 (0 = scipy's fill) of every output pixel of
    ``scipy.ndimage.zoom(x, (size / H, size / W), order=0)``, computed by scipy as above.
    (scipy's ``mode="constant"`` fills a last row or column whose sampling coordinate falls
    a rounding error beyond the edge with 0, e.g. for 32 -> 16; TransUNet's labels have it.)"""
    h, w = shape
    index = np.arange(1, h * w + 1, dtype=np.float64).reshape(h, w)
    return ndimage.zoom(index, (size / h, size / w), order=0).astype(_index_dtype(h * w + 1))


def _take(array: np.ndarray, index: np.ndarray, pad: bool) -> np.ndarray:
    """``array`` (H, W) or (H, W, C) gathered at the flat pixel ``index`` (output shape + C);
    ``pad``: index 0 is the zero fill and pixel p sits at index p + 1."""
    flat = array.reshape(array.shape[0] * array.shape[1], *array.shape[2:])
    if pad:
        flat = np.concatenate([np.zeros((1, *flat.shape[1:]), flat.dtype), flat])
    return flat[index]


class TransUNetTransform:
    """TransUNet's ``RandomGenerator`` (``datasets/dataset_synapse.py``) for one slice.

    Steps, on the slice at its stored resolution (H, W) (see the module docstring)::

        u = U(0, 1); if u > 0.5:  k ~ {0..3}, axis ~ {0, 1}: rot90(k), then flip(axis)
        elif U(0, 1) > 0.5:       angle ~ {-20..19}: ndimage.rotate(angle, order=0, reshape=False)
        if (H, W) != (S, S):      ndimage.zoom((S / H, S / W)): image order=3, mask order=0

    The draws have TransUNet's structure (TransUNet takes the two branch draws from Python's
    ``random`` and ``k``, ``axis`` and ``angle`` from NumPy's global generator; here all come
    from one ``numpy.random.Generator``, seeded by :meth:`set_random_seed`). A multi-channel
    image is transformed channel by channel, each as TransUNet's single-channel slice.
    ``augment=False`` applies only the zoom (validation).

    Args:
        image_size: the output side ``S``.
        augment: draw the rotations and flips (training) or only resize (validation).
        seed: initial seed of the generator.
    """

    def __init__(self, image_size: int, augment: bool = True, seed: int | None = None) -> None:
        self.image_size = _check_size(image_size)
        self.augment = bool(augment)
        self.rng = np.random.default_rng(seed)

    def set_random_seed(self, seed: int) -> None:
        """Reseed the random draws."""
        self.rng = np.random.default_rng(seed)

    def __repr__(self) -> str:
        return f"TransUNetTransform(image_size={self.image_size}, augment={self.augment})"

    def __call__(self, *, image: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        """``image`` (H, W) or (H, W, C) float, ``mask`` (H, W) integer -> ``{"image": (S, S)
        or (S, S, C) float32, "mask": (S, S)}`` (the mask keeps its dtype)."""
        if image.shape[:2] != mask.shape or mask.ndim != 2:
            raise ValueError(
                f"Expected `image` (H, W[, C]) and `mask` (H, W) of one size, but got "
                f"{image.shape} and {mask.shape}"
            )
        if self.augment:
            image, mask = self._augment(image, mask)
        h, w = mask.shape
        s = self.image_size
        if (h, w) != (s, s):
            factors = (s / h, s / w)
            if image.ndim == 2:
                image = ndimage.zoom(image, factors, order=3)
            else:
                image = np.stack(
                    [ndimage.zoom(image[:, :, c], factors, order=3) for c in range(image.shape[2])],
                    axis=-1,
                )
            mask = _take(mask, _zoom_index((h, w), s), pad=True)
        return {
            "image": np.ascontiguousarray(image, dtype=np.float32),
            "mask": np.ascontiguousarray(mask),
        }

    def _augment(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        if rng.random() > 0.5:
            k = int(rng.integers(0, 4))
            axis = int(rng.integers(0, 2))
            image = np.flip(np.rot90(image, k, axes=(0, 1)), axis=axis)
            mask = np.flip(np.rot90(mask, k, axes=(0, 1)), axis=axis)
        elif rng.random() > 0.5:
            angle = int(rng.integers(-20, 20))  # TransUNet: np.random.randint(-20, 20)
            index = _rotation_index(mask.shape, angle)
            image = _take(image, index, pad=True)
            mask = _take(mask, index, pad=True)
        return image, mask
