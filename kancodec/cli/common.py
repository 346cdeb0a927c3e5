"""What every command shares: the app objects, common options, error handling, Rich output.

Every user-fixable problem is a :class:`~kancodec.errors.KanError`; it is printed as one
line and mapped to an exit code (:data:`EXIT_CODES`): 2 bad option value, 3 bad input,
4 bad ``.kan`` file, 5 output problem, 6 device unavailable, 130 interrupted. A library
:class:`~kancodec.errors.OptionError` names parameters; :func:`flag` turns each into the
option a user types.
"""

from __future__ import annotations

import json
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..errors import EXIT_CODES, KanError, OptionError
from ..runtime import Event

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Audio as the weights of small Kolmogorov-Arnold networks (KAN implicit neural "
                       "representations). encode fits networks to a WAV/FLAC/OGG file and stores their "
                       "quantised weights in a .kan file; decode evaluates them at any sample rate.")
bench_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                        help="Benchmarks that print numbers (speed and quality targets live here, not in tests).")
app.add_typer(bench_app, name="bench")
err = Console(stderr=True)

QUIET = typer.Option(False, "--quiet", "-q", help="Print nothing but errors.")
FORCE = typer.Option(False, "--force", "-f", help="Overwrite the output if it exists.")
DEVICE = typer.Option("auto", "--device", help="auto (CUDA when available, else CPU), cpu or cuda.")


def _threads(value: str) -> str:
    """``--threads``: applied as soon as it is parsed (a bad value is a usage error, exit 2)."""
    from .. import threads

    try:
        threads.use(value)
    except KanError as e:
        raise typer.BadParameter(message(e).removeprefix("--threads ")) from None
    return value


THREADS = typer.Option("auto", "--threads", callback=_threads, metavar="N|auto",
                       help="CPU threads: auto (default: the cores other processes leave free, re-measured while "
                            "working) or a number. Also KANCODEC_THREADS.")
JSON_OUT = typer.Option(None, "--json", help="Also write the results to this JSON file.")
HYPER_DEFAULT = "fewsound-kan"

#: library parameters whose option is not simply ``--name-with-dashes``
FLAGS = {"preset_name": "--preset", "config": "--arch/--n-freqs/--hidden/--grid/--order",
         "postfilter": "--no-postfilter", "commitment": "commitment", "ema_decay": "ema_decay", "quantizer_dropout": "quantizer_dropout"}


def flag(param: str) -> str:
    """The command-line option of a library parameter."""
    return FLAGS.get(param, "--" + param.replace("_", "-"))


# control characters (terminal escapes, carriage returns, bidi overrides): never printed raw
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str, lines: bool = True) -> str:
    """Text from files or exceptions, safe for a terminal: control characters as escapes
    (``\\x1b``); newlines and tabs kept unless ``lines`` is False (one table cell, where a
    newline from a file could forge a line of output)."""
    text = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), text)
    return text if lines else text.replace("\n", "\\n").replace("\t", "\\t")


def message(e: KanError | str) -> str:
    """One line: the error in the user's terms, control characters escaped."""
    text = e.render(flag) if isinstance(e, OptionError) else str(e)
    return " ".join(printable(text).split())


def fail(e: KanError | str, code: int | None = None) -> None:
    """Print one ``error:`` line and exit with the error's code (or ``code``)."""
    if code is None:
        code = next(c for t, c in EXIT_CODES.items() if isinstance(e, t))
    err.print(f"[bold red]error:[/] {escape(message(e))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that every ``finally`` (temporary files) runs."""


def interrupted(e: KeyboardInterrupt) -> int:
    """Report Ctrl-C or SIGTERM -> the exit code (130 or 143)."""
    err.print("terminated; nothing was written" if isinstance(e, Terminated) else "interrupted; nothing was written")
    return 143 if isinstance(e, Terminated) else 130


@contextmanager
def errors() -> Iterator[None]:
    """Map library errors to one line and an exit code; Ctrl-C to 130, SIGTERM to 143."""
    try:
        yield
    except KanError as e:
        fail(e)
    except KeyboardInterrupt as e:
        raise typer.Exit(interrupted(e)) from None
    except MemoryError:  # a last line of defence: the schema and the bounds should refuse first
        fail(KanError("out of memory; decode at a lower --sr, encode shorter pieces, or free some memory"), 1)


def progress_bar(console: Console, description: str, total: int, done: int = 0) -> tuple[Progress, int]:
    """A started transient Rich bar with a ``stats`` text field -> ``(bar, task)``."""
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                   console=console, transient=True)
    task = bar.add_task(description, total=total, completed=done, stats="")
    bar.start()
    return bar, task


class Reporter:
    """Base of the Rich renderers of library progress events: owns one bar at a time."""

    def __init__(self, console: Console, quiet: bool):
        self.console, self.quiet = console, quiet
        self.bar: Progress | None = None
        self.task = None

    def open_bar(self, description: str, total: int, done: int = 0) -> None:
        self.close()
        self.bar, self.task = progress_bar(self.console, description, total, done)

    def __call__(self, ev: Event) -> None:
        if not self.quiet:
            self.render(ev)

    def render(self, ev: Event) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def compile_choice(compile: str) -> bool | str:
    """``--compile auto|yes|no`` -> what the library takes."""
    choices = {"auto": "auto", "yes": True, "no": False}
    if compile not in choices:
        raise KanError(f"--compile {compile!r}: choose one of: auto, yes, no")
    return choices[compile]


def parse_hidden(hidden: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in hidden.split(",") if v.strip())
    except ValueError:
        raise KanError(f"--hidden {hidden!r}: give comma-separated widths, e.g. 48,24,12") from None


def number_list(text: str, option: str, example: str, kind=int) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise KanError(f"{option} {text!r}: give comma-separated positive numbers, e.g. {example}")
    return values


def rows_table(rows: list[tuple[str, str]]) -> Table:
    """Label/text rows as a borderless table; text from files is escaped (no Rich markup,
    no control characters)."""
    t = Table(show_header=False, box=None)
    for k, v in rows:
        t.add_row(f"[bold]{escape(printable(k, lines=False))}[/]", escape(printable(v, lines=False)))
    return t


def wide_console() -> Console:
    return Console() if sys.stdout.isatty() else Console(width=200)


def write_json(out: Optional[Path], result: dict, force: bool) -> None:
    """Write a result to ``--json`` (atomically), when one was asked for."""
    if out is not None:
        from ..audio import atomic_path

        with atomic_path(out, force) as tmp:
            tmp.write_text(json.dumps(result, indent=1))
