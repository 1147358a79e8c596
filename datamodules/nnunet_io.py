"""Image readers of nnU-Net raw datasets: NIfTI (3D, or MSD 4D), 2D natural images, SimpleITK.

Every reader returns ``(channels, affine)``: a list of raw-voxel-order arrays and a (4, 4)
voxel -> RAS mm affine.

- ``.nii.gz`` / ``.nii``: the project's NIfTI reader (``datamodules.nifti``), arrays (X, Y, Z);
  an MSD 4D image (X, Y, Z, C) gives C channels.
- ``.png`` / ``.bmp`` / ``.tif``: as nnU-Net's NaturalImage2DIO, a grey image is 1 channel, RGB 3,
  RGBA 4; arrays (H, W), affine the identity (1 mm pixels).
- ``.nrrd`` / ``.mha``: SimpleITK (optional extra ``sitk``), arrays (X, Y, Z), the LPS geometry
  turned into a RAS affine.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from datamodules.nifti import _load_image, read_nifti
from datamodules.nnunet_layout import DatasetError

__all__ = ["NATURAL_2D_ENDINGS", "raw_spacing", "read_image"]

NATURAL_2D_ENDINGS = (".png", ".bmp", ".tif")
_SITK_ENDINGS = (".nrrd", ".mha")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _sitk():
    try:
        import SimpleITK
    except ImportError as exc:
        raise DatasetError(
            "Reading .nrrd / .mha needs SimpleITK: pip install -e '.[sitk]' (or pip install "
            "SimpleITK)"
        ) from exc
    return SimpleITK


def _read_natural(path: Path) -> tuple[list[np.ndarray], np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            array = np.asarray(img)
    except (OSError, UnidentifiedImageError) as exc:
        raise DatasetError(f"Cannot read image {path}: corrupt or not an image ({exc})") from exc
    if array.ndim == 2:
        return [array], np.eye(4)
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return [array[..., c] for c in range(array.shape[2])], np.eye(4)
    raise DatasetError(f"Image {path} has shape {array.shape}; expected grey, RGB or RGBA")


def _read_sitk(path: Path) -> tuple[list[np.ndarray], np.ndarray]:
    sitk = _sitk()
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise DatasetError(f"Cannot read image {path}: {str(exc).splitlines()[0]}") from exc
    if img.GetDimension() != 3:
        raise DatasetError(f"Image {path} is {img.GetDimension()}D; expected a 3D volume")
    array = sitk.GetArrayFromImage(img)  # (Z, Y, X[, C])
    direction = np.asarray(img.GetDirection(), np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(img.GetSpacing(), np.float64)[None, :]
    lps[:3, 3] = img.GetOrigin()
    affine = _LPS_TO_RAS @ lps
    if array.ndim == 4:
        return [array[..., c].transpose(2, 1, 0) for c in range(array.shape[3])], affine
    return [array.transpose(2, 1, 0)], affine


def _read_nifti_channels(path: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """A 3D NIfTI file as one channel, a 4D one (X, Y, Z, C) as C channels."""
    if not path.is_file():
        raise DatasetError(f"Image file {path} not found")
    try:
        img = _load_image(path)
        ndim = len(img.shape)
    except Exception as exc:  # noqa: BLE001 - any header problem is a bad file
        raise DatasetError(f"Cannot read NIfTI file {path}: {type(exc).__name__}: {exc}") from exc
    if ndim == 4 and img.shape[3] > 1:
        data = np.asanyarray(img.dataobj)
        return [data[..., c] for c in range(data.shape[3])], np.asarray(img.affine, np.float64)
    try:
        data, affine = read_nifti(path)
    except (FileNotFoundError, ValueError) as exc:
        raise DatasetError(str(exc).splitlines()[0]) from exc
    return [data], affine


def read_image(path: str | Path, ending: str) -> tuple[list[np.ndarray], np.ndarray]:
    """Read one image file as ``(channels, affine)`` (see the module docstring).

    Raises:
        DatasetError: unreadable file, unsupported shape, SimpleITK missing.
    """
    path = Path(path)
    if ending in (".nii.gz", ".nii"):
        return _read_nifti_channels(path)
    if ending in NATURAL_2D_ENDINGS:
        return _read_natural(path)
    if ending in _SITK_ENDINGS:
        return _read_sitk(path)
    raise DatasetError(f"No reader for {path} (file ending {ending!r})")


def raw_spacing(path: str | Path, ending: str) -> np.ndarray:
    """Voxel spacing (3,) in raw voxel order, from the header only (ones for 2D images)."""
    path = Path(path)
    if ending in NATURAL_2D_ENDINGS:
        return np.ones(3)
    if ending in _SITK_ENDINGS:
        sitk = _sitk()
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise DatasetError(f"Cannot read image {path}: {str(exc).splitlines()[0]}") from exc
        return np.asarray(reader.GetSpacing()[:3], np.float64)
    try:
        affine = nib.load(str(path)).affine
    except Exception as exc:  # noqa: BLE001 - any header problem is a bad file
        raise DatasetError(f"Cannot read NIfTI file {path}: {type(exc).__name__}: {exc}") from exc
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
