"""The errors nmt raises for bad input: each carries a message meant for the user."""


class NMTError(Exception):
    """Base class of nmt's user-facing errors."""


class CheckpointError(NMTError):
    """A checkpoint folder or Hub repo cannot be loaded."""


class DataError(NMTError):
    """Input text or files are unusable (the message names the file and line)."""
