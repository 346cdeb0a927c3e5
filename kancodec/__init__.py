"""kancodec: audio as the weights of small Kolmogorov-Arnold networks.

See :mod:`kancodec.api` for the library API and ``kancodec --help`` for the CLI.
"""

__version__ = "0.1.0"

from .api import Event, decode, describe, encode, evaluate, mix, resolve_device, save  # noqa: E402
from .aecodec import AEFile  # noqa: E402
from .errors import DeviceError, FormatError, InputError, KanError, OptionError, OutputError  # noqa: E402
from .fit import PRESETS, FitSettings  # noqa: E402
from .inr import ARCHS, INR_CONFIGS, KANConfig  # noqa: E402
from .inrfile import KanFile  # noqa: E402
from .kanfile import load  # noqa: E402
from .modelfile import available_models  # noqa: E402

__all__ = ["encode", "decode", "describe", "evaluate", "mix", "load", "save", "resolve_device", "Event", "KanFile",
           "AEFile", "KANConfig", "ARCHS", "INR_CONFIGS", "FitSettings", "PRESETS", "available_models",
           "KanError", "OptionError", "InputError", "FormatError", "OutputError", "DeviceError", "__version__"]
