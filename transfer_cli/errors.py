"""The one user-facing error type: its message is printed as a single line and the process exits with code 2."""


class TransferError(Exception):
    """A problem the user can fix (bad config, missing data, offline hub...). The message names the fix."""

    exit_code = 2
