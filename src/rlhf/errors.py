"""One exception type for problems a user can fix; the CLI prints it as one line."""


class RLHFError(Exception):
    """Bad input or configuration: the message names the file, line, key or value at fault."""
