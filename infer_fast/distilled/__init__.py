"""Floor 2: the distilled-dataset format (:mod:`.dataset`: array files, composition, writing and loading), its
manifest's schema (:mod:`.manifest`) and the ImageFolder export (:mod:`.export`)."""

from infer_fast.distilled.dataset import ARRAY_FILES, DistilledDataset, load_distilled, synthetic_index, write_distilled
from infer_fast.distilled.manifest import FORMAT_VERSION, DistilledFormatError, Manifest

__all__ = ["ARRAY_FILES", "FORMAT_VERSION", "DistilledDataset", "DistilledFormatError", "Manifest", "load_distilled",
           "synthetic_index", "write_distilled"]
