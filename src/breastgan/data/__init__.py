"""Data sources: the dataset contract, registered datasets and image I/O."""

from breastgan.data.base import DATASETS, DatasetInfo, ImageDataset, TensorDataset, build_dataset

__all__ = ["DATASETS", "DatasetInfo", "ImageDataset", "TensorDataset", "build_dataset"]


import breastgan.data.prepared  # noqa: E402,F401  (registers the "prepared" dataset)
import breastgan.data.phantom  # noqa: E402,F401  (registers the built-in "phantom" dataset)
import breastgan.data.phantom_ultrasound  # noqa: E402,F401  (registers "phantom_ultrasound")
import breastgan.data.image_folder  # noqa: E402,F401  (registers the "image_folder" dataset)
import breastgan.data.phantom_full  # noqa: E402,F401  (registers the two-view full-field "phantom_full" dataset)
