"""The one error type a harness verb reports: its message is a single line naming the file."""

from __future__ import annotations


class HarnessError(Exception):
    """A user-facing failure (bad input, checksum, missing file). The CLI prints it and exits 2."""

    def __init__(self, message: str) -> None:
        # One line, always: the operator shows it in the CR status and kubectl prints it as is.
        super().__init__(" ".join(message.split()))

    @property
    def message(self) -> str:
        return str(self)
