"""Error types. Every message is one line that names the problem and the fix.

The CLI maps each type to an exit code (see ``cli.EXIT_CODES``).
"""


class KanError(Exception):
    """Base class: a problem the user can fix (bad input, bad option)."""


class InputError(KanError):
    """An input file is missing, unreadable, empty or holds bad samples."""


class FormatError(KanError):
    """A ``.kan`` file is not one, is truncated or damaged, or is of an unknown version."""


class OutputError(KanError):
    """The output cannot be written (exists without ``--force``, unwritable directory)."""


class DeviceError(KanError):
    """The requested device is not available."""


class Interrupted(KanError):
    """Long work stopped by Ctrl-C (after saving what can be resumed)."""
