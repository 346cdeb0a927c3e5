"""Error types. Every message is one line that names the problem and the fix.

The CLI maps each type to an exit code (see ``cli.common.EXIT_CODES``). An
:class:`OptionError` names the parameters it is about as ``{name}`` fields: the library's
message shows the parameter names (``refine needs hyper``), the CLI shows its flags
(``--refine needs --hyper``), so neither speaks the other's language.
"""

from __future__ import annotations

import re
from typing import Callable


class KanError(Exception):
    """Base class: a problem the user can fix (bad input, bad option)."""


class OptionError(KanError):
    """A parameter (an option on the command line) has a value that cannot work.

    Args:
        template: the message, with ``{name}`` where a parameter is named; other braces
            are left alone.
        names: the parameters named in ``template``.
    """

    def __init__(self, template: str, *names: str):
        self.template, self.names = template, names
        super().__init__(self.render(lambda name: name))

    def render(self, flag: Callable[[str], str]) -> str:
        """The message with each parameter ``name`` written as ``flag(name)``."""
        if not self.names:
            return self.template
        pattern = re.compile(r"\{(" + "|".join(map(re.escape, self.names)) + r")\}")
        return pattern.sub(lambda m: flag(m.group(1)), self.template)


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


#: the exit code of each error type (first match), as the command line uses them: 2 bad option
#: value, 3 bad input, 4 bad ``.kan`` file, 5 output problem, 6 device unavailable, 130 interrupted
EXIT_CODES = {Interrupted: 130, InputError: 3, FormatError: 4, OutputError: 5, DeviceError: 6, KanError: 2}


def exit_code(e: BaseException) -> int:
    """The exit code of an error (1 for anything that is not a :class:`KanError`)."""
    return next((c for t, c in EXIT_CODES.items() if isinstance(e, t)), 1)
