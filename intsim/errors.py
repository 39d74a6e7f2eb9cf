"""The one exception type for bad input.

Every message names the offending field and says how to fix it; the CLI prints the
message alone (no traceback), library users can catch :class:`GQAError` (a ValueError).
"""


class GQAError(ValueError):
    """Bad input: a configuration, table file or argument that cannot be used as given."""

    def __init__(self, field: str, problem: str, fix: str | None = None):
        self.field = field
        msg = f"{field}: {problem}"
        if fix:
            msg += f" ({fix})"
        super().__init__(msg)
