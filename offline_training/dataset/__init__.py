"""The avatar dataset: built from a video by ``stableface prepare``, read back by the trainers."""

from offline_training.dataset.manifest import SCHEMA_VERSION, DatasetManifest
from offline_training.dataset.reader import AvatarDataset

__all__ = ["SCHEMA_VERSION", "AvatarDataset", "DatasetManifest"]
