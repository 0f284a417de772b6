"""Errors raised while reading or fetching datasets."""


class DatasetFileError(ValueError):
    """A dataset file exists but cannot be read: truncated, corrupt or of the wrong layout."""


class ChecksumError(ValueError):
    """A downloaded file's MD5 does not match the published checksum."""


class DownloadError(OSError):
    """A dataset file could not be fetched or unpacked."""
