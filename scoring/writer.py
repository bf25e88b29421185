"""Moved to :mod:`scoring.publish` (one publisher for files and folders); kept so imports still work."""

from scoring.publish import METADATA_KEY, WriteResult, check_target, read_metadata, write_parquet

__all__ = ["METADATA_KEY", "WriteResult", "check_target", "read_metadata", "write_parquet"]
