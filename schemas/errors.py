"""The one error type users see as a single line (no traceback): bad input they can fix."""


class UserError(ValueError):
    """Bad input, configuration or data; the message names the problem and the fix in one line."""
