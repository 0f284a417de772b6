"""Errors raised while reading or fetching datasets."""


class DatasetFileError(ValueError):
    """A dataset file exists but cannot be read: truncated, corrupt or of the wrong layout."""


class DataChangedError(DatasetFileError):
    """Data whose content hash differs from the one a run recorded."""


class ChecksumError(ValueError):
    """A downloaded file's MD5 does not match the published checksum."""


class DownloadError(OSError):
    """A dataset file could not be fetched or unpacked."""


class MissingDependencyError(ImportError):
    """An optional package that reading this data needs is not installed; the message says which
    and how to install it (`pip install 'adt-fast[data]'` has them all)."""

    def __init__(self, what: str, package: str):
        super().__init__(f"{what} needs {package}: pip install {package} (or pip install 'adt-fast[data]')")
        self.what, self.package = what, package

    def __reduce__(self):  # two arguments, not the message: picklable (e.g. from a DataLoader worker)
        return type(self), (self.what, self.package)
