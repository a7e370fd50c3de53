"""User-facing errors: one message that names the input, what was expected and what to do.

The CLI tells them apart by exit code: :class:`VitsearchError` is bad input (2, like a bad command line), a
:class:`RunFailure` happened while running on input that was fine (1): a device, database or hub out of reach,
a measurement that failed.
"""


class VitsearchError(Exception):
    """Bad input or an unavailable resource. The CLI prints the message without a traceback (``--debug`` shows it)."""


class RunFailure(VitsearchError):
    """The input was fine, running it failed: retrying later, or fixing the machine, device or network, may help."""
