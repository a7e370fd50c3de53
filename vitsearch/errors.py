"""User-facing errors: one message that names the input, what was expected and what to do."""


class VitsearchError(Exception):
    """Bad input or an unavailable resource. The CLI prints the message without a traceback (``--debug`` shows it)."""
