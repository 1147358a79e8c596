"""LightningDataModules: raw volumes -> HDF5 (one group per case) -> 2D slices / 3D volumes.

See ``datamodules.hdf5`` for the HDF5 layout and ``datamodules.nifti`` for orientation.
"""

from datamodules.acdc import ACDCDataModule
from datamodules.base import SliceDataModule
from datamodules.msseg2 import MSSEG2DataModule
from datamodules.nifti import canonical_to_raw, load_nifti_canonical, save_nifti_like
from datamodules.nnunet import NNUNetDataModule
from datamodules.phantom import PhantomDataModule, generate_phantom
from datamodules.synapse import SynapseDataModule

__all__ = [
    "ACDCDataModule",
    "MSSEG2DataModule",
    "NNUNetDataModule",
    "PhantomDataModule",
    "SliceDataModule",
    "SynapseDataModule",
    "canonical_to_raw",
    "generate_phantom",
    "load_nifti_canonical",
    "save_nifti_like",
]
