"""kancodec: audio as the weights of small Kolmogorov-Arnold networks.

See :mod:`kancodec.api` for the library API and ``kancodec --help`` for the CLI.
"""

__version__ = "0.1.0"

from .api import Event, decode, encode, evaluate, resolve_device, save  # noqa: E402
from .errors import DeviceError, FormatError, InputError, KanError, OutputError  # noqa: E402
from .fit import PRESETS, FitSettings  # noqa: E402
from .inr import ARCHS, INR_CONFIGS, KANConfig  # noqa: E402
from .kanfile import KanFile, load  # noqa: E402

__all__ = ["encode", "decode", "evaluate", "load", "save", "resolve_device", "Event", "KanFile", "KANConfig",
           "ARCHS", "INR_CONFIGS",
           "FitSettings", "PRESETS", "KanError", "InputError", "FormatError", "OutputError", "DeviceError",
           "__version__"]
