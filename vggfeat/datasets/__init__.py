"""Dataset indexes: a root -> samples (id, path[, box])."""

from vggfeat.datasets.folder import ScanReport, find_images, read_list
from vggfeat.datasets.samples import Sample, region_id, sample_box

__all__ = ["Sample", "ScanReport", "find_images", "read_list", "region_id", "sample_box"]
