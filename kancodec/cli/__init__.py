"""The ``kancodec`` command line: a thin Typer layer over :mod:`kancodec.api`.

One module per group of commands, all on the one ``app`` of :mod:`.common`:
:mod:`.codec` (encode, decode, info, mix, demo, models), :mod:`.evaluate` (eval),
:mod:`.train` (train-hyper, train-ae), :mod:`.bench` (bench …). Errors, exit codes and the
library-parameter-to-flag mapping live in :mod:`.common`.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import typer
from rich.markup import escape

from .. import __version__
from ..corpus import AUDIO_EXT
from . import bench, codec, evaluate, train  # noqa: F401  (each registers its commands on app)
from .common import EXIT_CODES, HYPER_DEFAULT, Terminated, app, err, interrupted, message


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


def _terminate(signum, frame) -> None:
    raise Terminated()


def _is_click(e: Exception, name: str) -> bool:
    """Whether ``e`` is Click's exception ``name`` (or a subclass): by name, since Typer
    ships its own copy of Click in some versions and uses Click's in others."""
    return any(t.__name__ == name for t in type(e).__mro__)


def _command(argv: list[str]) -> list[str]:
    """The subcommand words at the start of ``argv`` (``["bench", "speed"]``), for a usage
    error that Click raised without its context."""
    words = []
    group = app
    for word in argv:
        names = {c.name or c.callback.__name__.replace("_", "-") for c in getattr(group, "registered_commands", [])} | {
            g.name for g in getattr(group, "registered_groups", [])}
        if word.startswith("-") or word not in names:
            break
        words.append(word)
        group = next((g.typer_instance for g in getattr(group, "registered_groups", []) if g.name == word), None)
        if group is None:
            break
    return words


def run() -> None:
    """The ``kancodec`` program: SIGTERM cleans up like Ctrl-C, and a command line Click
    cannot parse gets one ``error:`` line (exit 2) pointing at ``--help``."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = app(args=optional_values(sys.argv[1:]), prog_name="kancodec", standalone_mode=False)
    except KeyboardInterrupt as e:
        code = interrupted(e)
    except Exception as e:
        if _is_click(e, "NoArgsIsHelpError"):  # bare "kancodec" or "kancodec bench": the help, as Click does
            typer.echo(e.ctx.get_help(), err=True)
            code = 2
        elif _is_click(e, "Abort"):
            code = interrupted(KeyboardInterrupt())
        elif _is_click(e, "ClickException"):
            ctx = getattr(e, "ctx", None)
            path = ctx.command_path if ctx else " ".join(["kancodec", *_command(sys.argv[1:])])
            hint = f"; see '{path} --help'" if _is_click(e, "UsageError") else ""
            err.print(f"[bold red]error:[/] {escape(message(e.format_message()).rstrip('.'))}{escape(hint)}", highlight=False,
                      soft_wrap=True)
            code = e.exit_code
        else:
            raise
    sys.exit(code if isinstance(code, int) else 0)


__all__ = ["app", "run", "optional_values", "EXIT_CODES"]
