"""One exception type for every mistake a user can make.

The CLI prints a `SlimlmError` as one line (no traceback) and exits non-zero, so every
message must name the problem *and* the fix.
"""


class SlimlmError(Exception):
    """A user-facing error: bad input, missing file, mismatched models. One line, with the fix."""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
