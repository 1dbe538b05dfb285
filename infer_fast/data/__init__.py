"""Image data for infer_fast: ImageFolder roots or the embedded digits, validated, sharded, on DALI or PyTorch.

Public API (see CONTRACTS.md): :func:`dataset_info`, :func:`sample_naturals`, :func:`make_loader`, and
:func:`scan_split` (the validated, cached file list behind ``infer-fast data check``).
"""

from infer_fast.data.api import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetInfo,
    NaturalSample,
    dali_available,
    dataset_info,
    make_loader,
    natural_overlap,
    sample_naturals,
)
from infer_fast.data.folder import DataError, SplitScan, scan_split

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DataError",
    "DatasetInfo",
    "NaturalSample",
    "SplitScan",
    "dali_available",
    "dataset_info",
    "make_loader",
    "natural_overlap",
    "sample_naturals",
    "scan_split",
]
