"""The error every data-set problem raises (unknown name, missing files, unusable
annotations), with a message that names the problem and the fix."""

__all__ = ["DatasetError"]


class DatasetError(RuntimeError):
    """A data set named by the config is unknown, incomplete or malformed."""
