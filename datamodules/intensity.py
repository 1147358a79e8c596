"""Images stored in their raw type, with the map that normalizes them when read.

A prepared case may keep its image in the raw data's small integer type (see
:func:`storage_dtype`: uint8, int8, uint16, int16 hold 2-4x fewer bytes than float32) and carry,
per channel, an intensity map ``{"clip": [lo, hi] or None, "shift": s, "scale": k}``. The
normalized float32 value of a raw value x is

    (clip(float32(x), lo, hi) - float32(s)) / float32(k)

computed with float32 operations in this order (:func:`apply_intensity_map`), which are those of
normalizing at preparation time: the values read are bit-identical to a float32 image
normalized before it was stored. ``datamodules.nnunet_norm`` computes the maps of nnU-Net's
schemes; ``datamodules.hdf5`` applies them as it reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import cv2
import numpy as np

__all__ = [
    "IntensityMap",
    "apply_intensity_map",
    "decode_maps",
    "encode_maps",
    "restore_image",
    "storage_dtype",
]

IntensityMap = dict[str, Any]
#: raw types stored as they are: float32 holds each of their values exactly
STORABLE = tuple(np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16))


def storage_dtype(dtypes: Iterable[np.dtype]) -> np.dtype:
    """The type that stores channels of these raw types: their common type when it is one of
    :data:`STORABLE`, else float32."""
    common = np.result_type(*dtypes)
    return common if common in STORABLE else np.dtype(np.float32)


def apply_intensity_map(
    raw: np.ndarray, spec: IntensityMap, out: np.ndarray | None = None
) -> np.ndarray:
    """``(clip(float32(raw), lo, hi) - shift) / scale`` in float32 (module docstring), into
    ``out`` (float32, ``raw``'s shape; default a new array; may be ``raw`` itself)."""
    if out is None:
        out = np.empty(np.shape(raw), np.float32)
    if out is not raw:
        out[...] = raw  # float32 holds every raw value it is given (STORABLE) as it is
    if spec.get("clip") is not None:
        np.clip(out, float(spec["clip"][0]), float(spec["clip"][1]), out=out)
    if float(spec["shift"]) != 0.0:
        out -= np.float32(spec["shift"])
    if float(spec["scale"]) != 1.0:
        out /= np.float32(spec["scale"])
    return out


@lru_cache(maxsize=256)
def _uint8_table(shift: float, scale: float, clip: tuple[float, float] | None) -> np.ndarray:
    """The float32 value of each uint8 value under a map (256,): the map applied to them."""
    spec = {"shift": shift, "scale": scale, "clip": clip}
    return apply_intensity_map(np.arange(256, dtype=np.uint8), spec)


def restore_image(raw: np.ndarray, maps: Sequence[IntensityMap] | None) -> np.ndarray:
    """A stored (C, ...) image as float32: each channel through its map (``maps=None``: the
    image is stored normalized already, returned as float32). A uint8 channel goes through
    its map's table of 256 values (``cv2.LUT``: the same values, in a third of the time)."""
    if maps is None:
        return np.asarray(raw, np.float32)
    if len(maps) != raw.shape[0]:
        raise ValueError(f"{len(maps)} intensity maps for an image of {raw.shape[0]} channels")
    out = np.empty(raw.shape, np.float32)
    for c, spec in enumerate(maps):
        if raw.dtype == np.uint8 and raw[c].flags.c_contiguous:
            clip = spec.get("clip")
            table = _uint8_table(
                spec["shift"], spec["scale"], None if clip is None else tuple(clip)
            )
            cv2.LUT(raw[c].reshape(-1, raw.shape[-1]), table, dst=out[c].reshape(-1, raw.shape[-1]))
        else:
            apply_intensity_map(raw[c], spec, out=out[c])
    return out


def encode_maps(maps: Sequence[IntensityMap | None]) -> str:
    """The maps as the JSON of a case's ``intensity`` attribute."""
    return json.dumps(list(maps))


def decode_maps(attrs: Any) -> list[IntensityMap] | None:
    """A case's maps from its attributes (``None`` when it stores normalized floats)."""
    text = attrs.get("intensity")
    return None if text is None else json.loads(text)
