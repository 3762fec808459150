"""Dataset indexes: a root -> samples (id, path)."""

from vggfeat.datasets.folder import ScanReport, find_images, read_list

__all__ = ["ScanReport", "find_images", "read_list"]
