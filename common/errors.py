"""The one error type users see as a single line (no traceback): bad input they can fix."""


class UserError(ValueError):
    """Bad input, configuration or data; the message names the problem and the fix in one line."""


def first_line(exc: BaseException) -> str:
    """An exception's first message line, for quoting inside a one-line error (its type if it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
