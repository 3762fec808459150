"""Dataset indexes: a root -> samples (id, path)."""

from vggfeat.datasets.folder import find_images

__all__ = ["find_images"]
