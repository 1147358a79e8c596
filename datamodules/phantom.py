"""Synthetic 3D phantom: the built-in default dataset, nothing to download.

Each volume is an elliptical "body" of soft tissue holding five labelled structures that span
both imbalances the topK losses target:

====  ==========================  =============================  ===============================
 id   class name                  size (default, voxels)         difficulty
====  ==========================  =============================  ===============================
  1   ``synthetic_large_organ``   ellipsoid, ~4-5 % of voxels    high contrast (+0.30), sharp
  2   ``synthetic_medium_organ``  ellipsoid, ~0.5 %              medium contrast (-0.15)
  3   ``synthetic_small_lesion``  2-4 spheres in organ 1, ~0.05% low contrast (-0.06 vs organ),
                                                                 strongly blurred boundary
  4   ``synthetic_thin_vessel``   2 curved tubes r ~1.2 mm, ~0.2% medium contrast (+0.15), blurred
  5   ``synthetic_tiny_spot``     ~15 spheres r ~1.5 mm, ~0.03%  high contrast (+0.35), tiny
====  ==========================  =============================  ===============================

On top: a smooth multiplicative bias field (quadratic polynomial, ``bias_strength``) and
Gaussian noise (``noise_std``). Intensities lie roughly in [0, 1] (air 0, tissue 0.4).

Knobs:
- ``imbalance`` (class imbalance, in [0.5, 2]): every structure's radius r becomes
  ``6 mm * (r / 6 mm) ** imbalance``. Mean foreground voxel counts over volumes (largest /
  smallest class): about 6x at 0.5, 150x at 1 (default), 10^4x at 1.5.
- ``difficulty`` (difficulty imbalance): each contrast c becomes
  ``0.35 * (|c| / 0.35) ** difficulty`` (sign kept) and each boundary blur sigma is multiplied
  by ``difficulty``; 0 gives every class the same high contrast and sharp edges.

Deterministic: case n is drawn from ``numpy.random.default_rng([seed, n])`` whatever the split
sizes. Default size (16 / 4 / 4 volumes of 32 x 128 x 128 voxels, spacing 2 x 1 x 1 mm) trains
a Unet/resnet18 at 128 x 128 on two CPU cores in minutes; generating it takes a few seconds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from datamodules.base import SliceDataModule
from datamodules.raw import CaseData, CaseSpec
from datamodules.transforms import DataProtocol

__all__ = ["PHANTOM_CLASS_NAMES", "PhantomDataModule", "generate_phantom"]

PHANTOM_CLASS_NAMES = (
    "background",
    "synthetic_large_organ",
    "synthetic_medium_organ",
    "synthetic_small_lesion",
    "synthetic_thin_vessel",
    "synthetic_tiny_spot",
)
GENERATOR_VERSION = 1

_TISSUE = 0.40
_C_MAX = 0.35
_R_REF = 6.0  # mm
# class -> (contrast vs its surroundings, boundary blur sigma in mm at difficulty 1)
_CONTRAST = {1: 0.30, 2: -0.15, 3: -0.06, 4: 0.15, 5: 0.35}
_BLUR = {1: 0.5, 2: 1.0, 3: 2.0, 4: 1.0, 5: 0.5}


def _radius(r: float, imbalance: float) -> float:
    return _R_REF * (r / _R_REF) ** imbalance


def _contrast(c: float, difficulty: float) -> float:
    return float(np.sign(c) * _C_MAX * (abs(c) / _C_MAX) ** difficulty)


def _ellipsoid(
    grid: tuple[np.ndarray, np.ndarray, np.ndarray],
    center: np.ndarray,
    radii: np.ndarray,
    angle: float,
) -> np.ndarray:
    """Boolean ellipsoid, semi-axes ``radii`` (mm, (z, y, x)), rotated by ``angle`` in-plane."""
    z, y, x = grid
    dz, dy, dx = z - center[0], y - center[1], x - center[2]
    ca, sa = np.cos(angle), np.sin(angle)
    u = ca * dy + sa * dx
    v = -sa * dy + ca * dx
    return (dz / radii[0]) ** 2 + (u / radii[1]) ** 2 + (v / radii[2]) ** 2 <= 1.0


def generate_phantom(
    rng: np.random.Generator,
    shape: tuple[int, int, int] = (32, 128, 128),
    spacing: tuple[float, float, float] = (2.0, 1.0, 1.0),
    imbalance: float = 1.0,
    difficulty: float = 1.0,
    noise_std: float = 0.05,
    bias_strength: float = 0.2,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate one phantom volume (see the module docstring).

    Args:
        rng: random generator (the only source of randomness).
        shape: (D, H, W) voxels.
        spacing: (D, H, W) voxel size in mm.
        imbalance, difficulty, noise_std, bias_strength: the knobs of the module docstring.

    Returns:
        ``(image float32 (D, H, W), label uint8 (D, H, W))`` with labels 0..5.
    """
    d, h, w = shape
    sp = np.asarray(spacing, dtype=np.float64)
    ext = np.asarray(shape) * sp  # extent in mm
    grid = tuple(
        ((np.arange(n, dtype=np.float32) + 0.5) * s - e / 2).reshape(
            [-1 if i == k else 1 for i in range(3)]
        )
        for k, (n, s, e) in enumerate(zip(shape, sp, ext, strict=True))
    )
    z, y, x = grid
    label = np.zeros(shape, dtype=np.uint8)

    # body: elliptic cylinder, a little jittered
    body_ry = ext[1] * rng.uniform(0.40, 0.46)
    body_rx = ext[2] * rng.uniform(0.42, 0.48)
    body = (y / body_ry) ** 2 + (x / body_rx) ** 2 <= 1.0
    body = np.broadcast_to(body, shape)

    def inside_body(n: int, margin: float) -> np.ndarray:
        """n random points (mm) inside the body, ``margin`` (fraction) from its edge."""
        r = np.sqrt(rng.uniform(0, 1, n)) * (1 - margin)
        t = rng.uniform(0, 2 * np.pi, n)
        zc = rng.uniform(-ext[0] / 2 * (1 - margin), ext[0] / 2 * (1 - margin), n)
        return np.stack([zc, r * np.sin(t) * body_ry, r * np.cos(t) * body_rx], axis=1)

    # 1: large organ
    c1 = np.array([rng.uniform(-0.1, 0.1) * ext[0], *(inside_body(1, 0.6)[0, 1:])])
    r1 = np.array(
        [ext[0] * 0.30, _radius(ext[1] * 0.22, imbalance), _radius(ext[2] * 0.16, imbalance)]
    )
    r1[0] = max(_radius(r1[0], imbalance), sp[0])
    organ1 = _ellipsoid(grid, c1, r1, rng.uniform(0, np.pi))
    label[organ1] = 1
    # 2: medium organ, on the other side of the body
    c2 = -c1 * rng.uniform(0.6, 1.0, 3)
    r2 = np.array(
        [
            max(_radius(ext[0] * 0.18, imbalance), sp[0]),
            _radius(ext[1] * 0.09, imbalance),
            _radius(ext[2] * 0.07, imbalance),
        ]
    )
    label[_ellipsoid(grid, c2, r2, rng.uniform(0, np.pi))] = 2
    # 3: small lesions inside organ 1
    for _ in range(int(rng.integers(2, 5))):
        rl = _radius(rng.uniform(3.0, 5.0), imbalance)
        cl = c1 + rng.uniform(-0.5, 0.5, 3) * r1
        lesion = _ellipsoid(grid, cl, np.array([max(rl, sp[0]), rl, rl]), 0.0)
        label[lesion] = 3
    # 4: thin vessels: smooth random curves, mostly in-plane, thickened with one EDT
    centre = np.zeros(shape, dtype=bool)
    t = np.linspace(0.0, 1.0, 4 * (h + w))
    for _ in range(2):
        a = rng.uniform(0, 2 * np.pi)
        freq, phase = rng.uniform(1.0, 2.5, 2), rng.uniform(0, 2 * np.pi, 3)
        span = 0.9 * min(body_ry, body_rx)
        p_y = span * (2 * t - 1) * np.sin(a) + 0.25 * body_ry * np.sin(2 * np.pi * freq[0] * t)
        p_x = span * (2 * t - 1) * np.cos(a) + 0.25 * body_rx * np.sin(2 * np.pi * freq[1] * t)
        p_z = (rng.uniform(-0.3, 0.3) + 0.15 * np.sin(2 * np.pi * t + phase[2])) * ext[0]
        idx = [
            np.clip(((p + e / 2) / s).astype(int), 0, n - 1)
            for p, e, s, n in zip((p_z, p_y, p_x), ext, sp, shape, strict=True)
        ]
        centre[idx[0], idx[1], idx[2]] = True
    centre &= body
    if centre.any():
        dist = ndimage.distance_transform_edt(~centre, sampling=sp)
        label[dist <= max(_radius(1.2, imbalance), 0.5)] = 4
    # 5: tiny spots anywhere in the body
    spots = np.zeros(shape, dtype=bool)
    pts = inside_body(15, 0.1)
    idx = [
        np.clip(((pts[:, k] + ext[k] / 2) / sp[k]).astype(int), 0, shape[k] - 1) for k in range(3)
    ]
    spots[idx[0], idx[1], idx[2]] = True
    dist = ndimage.distance_transform_edt(~spots, sampling=sp)
    label[dist <= max(_radius(1.5, imbalance), 0.5)] = 5
    label[~body] = 0

    # intensities: class levels, each class's boundary blurred with its own sigma
    level = np.zeros(6, dtype=np.float32)
    level[0] = _TISSUE
    level[1] = _TISSUE + _contrast(_CONTRAST[1], difficulty)
    level[2] = _TISSUE + _contrast(_CONTRAST[2], difficulty)
    level[3] = level[1] + _contrast(_CONTRAST[3], difficulty)
    level[4] = _TISSUE + _contrast(_CONTRAST[4], difficulty)
    level[5] = _TISSUE + _contrast(_CONTRAST[5], difficulty)
    image = np.zeros(shape, dtype=np.float32)
    weight = np.zeros(shape, dtype=np.float32)
    for k in range(6):
        onehot = (label == k).astype(np.float32)
        sigma = _BLUR.get(k, 0.0) * difficulty / sp
        soft = ndimage.gaussian_filter(onehot, sigma) if k and sigma.max() > 0 else onehot
        image += level[k] * soft
        weight += soft
    image /= np.maximum(weight, 1e-6)
    image *= body  # air is 0
    # smooth bias field: 1 + strength * quadratic polynomial in normalised coordinates
    if bias_strength:
        terms = [
            z / (ext[0] / 2),
            y / (ext[1] / 2),
            x / (ext[2] / 2),
            (y / (ext[1] / 2)) * (x / (ext[2] / 2)),
            (y / (ext[1] / 2)) ** 2,
            (x / (ext[2] / 2)) ** 2,
        ]
        coef = rng.uniform(-1, 1, len(terms)) / np.sqrt(len(terms))
        field = sum(float(c) * term for c, term in zip(coef, terms, strict=True))
        image *= (1.0 + bias_strength * field).astype(np.float32)
    if noise_std:
        image += rng.normal(0.0, noise_std, shape).astype(np.float32)
    return image.astype(np.float32, copy=False), label


class PhantomDataModule(SliceDataModule):
    """Procedurally generated phantom (see the module docstring); no raw data, no download.

    Args:
        data_dir: output folder of the HDF5 files (default ``data/phantom``).
        num_train, num_val, num_test: volumes per split (default 16 / 4 / 4).
        volume_shape: (D, H, W) voxels of each volume.
        spacing: (D, H, W) voxel size in mm.
        imbalance: class-imbalance knob (0 = equal sizes, 1 = default, > 1 stronger).
        difficulty: difficulty-imbalance knob (0 = equal high contrast, 1 = default).
        noise_std: Gaussian noise standard deviation (intensity units, tissue = 0.4).
        bias_strength: amplitude of the multiplicative bias field.
        image_size, batch_size, num_workers, seed, compression, pin_memory, progress,
            protocol: see :class:`~datamodules.base.SliceDataModule`.
    """

    dataset_name = "phantom"
    default_class_names = PHANTOM_CLASS_NAMES
    default_channel_names = ("synthetic_intensity",)

    def __init__(
        self,
        data_dir: str = "data/phantom",
        num_train: int = 16,
        num_val: int = 4,
        num_test: int = 4,
        volume_shape: tuple[int, int, int] = (32, 128, 128),
        spacing: tuple[float, float, float] = (2.0, 1.0, 1.0),
        imbalance: float = 1.0,
        difficulty: float = 1.0,
        noise_std: float = 0.05,
        bias_strength: float = 0.2,
        image_size: int = 128,
        batch_size: int = 16,
        num_workers: int = 2,
        seed: int = 1234,
        compression: str | None = None,
        pin_memory: bool = False,
        progress: bool = True,
        protocol: DataProtocol = "default",
    ) -> None:
        super().__init__(
            data_dir=data_dir,
            raw_dir=None,
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            compression=compression,
            pin_memory=pin_memory,
            progress=progress,
            protocol=protocol,
        )
        for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"Expected argument `{name}` to be an int >= 0, got {value}")
        if len(volume_shape) != 3 or min(volume_shape) < 4:
            raise ValueError(
                f"Expected argument `volume_shape` to be 3 ints >= 4 (D, H, W), got {volume_shape}"
            )
        if len(spacing) != 3 or min(spacing) <= 0:
            raise ValueError(f"Expected argument `spacing` to be 3 floats > 0, got {spacing}")
        for name, value in (
            ("imbalance", imbalance),
            ("difficulty", difficulty),
            ("noise_std", noise_std),
            ("bias_strength", bias_strength),
        ):
            if value < 0:
                raise ValueError(f"Expected argument `{name}` to be >= 0, got {value}")
        if not 0.5 <= imbalance <= 2.0:
            raise ValueError(f"Expected argument `imbalance` to be in [0.5, 2], got {imbalance}")
        if bias_strength >= 1:
            raise ValueError(
                f"Expected argument `bias_strength` to be in [0, 1), got {bias_strength}"
            )
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.volume_shape = tuple(int(v) for v in volume_shape)
        self.spacing = tuple(float(v) for v in spacing)
        self.imbalance, self.difficulty = float(imbalance), float(difficulty)
        self.noise_std, self.bias_strength = float(noise_std), float(bias_strength)

    def _settings(self) -> dict[str, Any]:
        return {
            **super()._settings(),
            "generator_version": GENERATOR_VERSION,
            "seed": self.seed,
            "volume_shape": self.volume_shape,
            "spacing": self.spacing,
            "imbalance": self.imbalance,
            "difficulty": self.difficulty,
            "noise_std": self.noise_std,
            "bias_strength": self.bias_strength,
        }

    def _plan(self) -> dict[str, list[CaseSpec]]:
        counts = {"train": self.num_train, "val": self.num_val, "test": self.num_test}
        plan: dict[str, list[CaseSpec]] = {}
        n = 0
        for split, count in counts.items():
            plan[split] = [CaseSpec(f"phantom{i:03d}") for i in range(n, n + count)]
            n += count
        return plan

    def _load_case(self, spec: CaseSpec) -> CaseData:
        number = int(spec.case_id.removeprefix("phantom"))
        image, label = generate_phantom(
            np.random.default_rng([self.seed, number]),
            shape=self.volume_shape,
            spacing=self.spacing,
            imbalance=self.imbalance,
            difficulty=self.difficulty,
            noise_std=self.noise_std,
            bias_strength=self.bias_strength,
        )
        sd, sh, sw = self.spacing
        affine = np.array(
            [[0, 0, sw, 0], [0, sh, 0, 0], [sd, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64
        )
        return CaseData(
            image=self.preprocess_image(image[None]),
            label=label,
            spacing=np.asarray(self.spacing),
            affine=affine,
            attrs={"synthetic": True},
        )

    def preprocess_image(self, image: np.ndarray) -> np.ndarray:
        """Identity (float32 cast): phantom intensities are generated on a fixed scale."""
        return np.asarray(image, dtype=np.float32)
