"""The error type every layer raises for problems a user can fix."""


class QuorumError(Exception):
    """A problem with the user's input or environment, worded for the user.

    The message names what is wrong and, where it can, what to do about it. The CLI prints it
    as one line and exits non-zero; the TUI shows it as a notification.
    """
