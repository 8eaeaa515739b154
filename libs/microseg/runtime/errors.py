"""Named failures. Each message says what went wrong, where, and what to do; the CLI prints it without a traceback."""


class MicrosegError(Exception):
    """Base of every failure microseg reports as a message rather than a traceback."""


class ConfigError(MicrosegError, ValueError):
    """The configuration cannot be loaded; the message names the file, key and fix."""


class HashKeyMissingError(MicrosegError):
    """The HMAC key's environment variable is not set."""


class TableMissingError(MicrosegError, FileNotFoundError):
    """A stage needs a Delta table that an earlier stage has not written."""


class ReconciliationError(MicrosegError):
    """Rows in != rows written + rows quarantined for a source."""


class DataQualityError(MicrosegError):
    """A critical data-quality rule failed; nothing downstream was written."""


class SourceMissingError(MicrosegError):
    """A source of the mapping has no files (or no table) to read."""


class SchemaDriftError(MicrosegError):
    """A source's files lack a column that its mapping requires."""


class ModelMissingError(MicrosegError):
    """A registered model has no champion to score with."""


class SparkPackagesError(MicrosegError):
    """Spark's Ivy could not resolve the Maven coordinates of ``spark.packages``."""


class TableSchemaError(MicrosegError, ValueError):
    """A write carries a column its table's registry entry does not declare, or one of another type."""


class RunLockError(MicrosegError):
    """A run could not take, confirm or keep the lock of its as_of in ops.run_locks: it does not run (on)."""


class RunInProgressError(RunLockError):
    """Another run holds the lock of this as_of (ops.run_locks) and its lease is live."""


class UnreadableFileError(MicrosegError):
    """A source file cannot be read with its mapping (compressed under a plain name, another delimiter, ...)."""


class UndecodableTextError(MicrosegError):
    """Too many rows of a source file hold text that does not decode in the source's encoding."""
