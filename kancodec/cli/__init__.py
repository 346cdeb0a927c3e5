"""The ``kancodec`` command line: a thin Typer layer over :mod:`kancodec.api`.

One module per group of commands, all on the one ``app`` of :mod:`.common`:
:mod:`.codec` (encode, decode, info, mix, demo, models), :mod:`.evaluate` (eval),
:mod:`.train` (train-hyper, train-ae), :mod:`.bench` (bench …). Errors, exit codes and the
library-parameter-to-flag mapping live in :mod:`.common`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from .. import __version__
from ..corpus import AUDIO_EXT
from . import bench, codec, evaluate, train  # noqa: F401  (each registers its commands on app)
from .common import EXIT_CODES, HYPER_DEFAULT, app


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kancodec {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version.")) -> None:
    """kancodec: KAN implicit neural representations as an audio codec."""


def optional_values(argv: list[str]) -> list[str]:
    """Let ``--hyper`` stand alone (Click has no optional option values): give it the
    default model when the next word is missing, another option, or the audio input."""
    out = list(argv)
    for i, word in enumerate(out):
        if word == "--hyper":
            nxt = out[i + 1] if i + 1 < len(out) else None
            if nxt is None or nxt.startswith("-") or Path(nxt).suffix.lower() in AUDIO_EXT:
                out[i] = f"--hyper={HYPER_DEFAULT}"
    return out


def run() -> None:
    app(args=optional_values(sys.argv[1:]), prog_name="kancodec")


__all__ = ["app", "run", "optional_values", "EXIT_CODES"]
