"""Many files in one process: ``kancodec encode a.wav b.flac dir/ -o out/``, and under ``torchrun``.

:func:`collect` turns the inputs (files, and folders searched recursively) into
:class:`Item` s with their outputs: ``OUT/name.kan`` for a file, ``OUT/<path inside the
folder>.kan`` for a folder's files, or next to each input without ``-o``. Outputs that exist
are skipped unless ``force``. :func:`encode_many` reads the files one after another and gives
the INR jobs to one :class:`~kancodec.fitqueue.FitQueue`, so the windows of different files
share batches (a GPU batch fills with short clips as with one long file); each file is
written, atomically, as soon as its last window is fitted. A file that fails (unreadable,
a bad option for it, a diverged fit) is reported and the others go on.

Under ``torchrun`` (``WORLD_SIZE`` > 1) each process encodes every ``WORLD_SIZE``-th file
on its own device (GPU ``LOCAL_RANK`` when there are GPUs), and the results are gathered
through ``torch.distributed`` so that rank 0 can print one summary for all.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from . import api, inrcodec
from .audio import read_audio
from .corpus import AUDIO_EXT, find_audio
from .errors import InputError, KanError, OptionError, exit_code
from .fitqueue import FitQueue, Job
from .runtime import Event, Progress, resolve_device


@dataclass
class Item:
    """One input of a batch and what became of it: ``status`` is ``pending``, ``encoded``,
    ``skipped`` (its output exists) or ``failed`` (``error`` says why, ``code`` is the exit
    code the error would have had alone)."""

    source: str
    output: str
    status: str = "pending"
    error: str = ""
    code: int = 0
    seconds: float = 0.0  # of audio
    kbps: float = 0.0
    si_snr_db: float | None = None
    encode_s: float = 0.0


def collect(inputs: list[Path], out_dir: Path | None, force: bool = False) -> list[Item]:
    """The batch's items, in input order (a folder's files sorted by path). OptionError if
    two inputs would write the same output or an input is missing."""
    items: list[Item] = []
    seen: dict[Path, str] = {}
    for given in inputs:
        given = Path(given)
        if str(given) == "-":
            raise OptionError("'-' (standard input) can only be the one input of an encode; give file names here")
        if given.is_dir():
            files = [(f, f.relative_to(given)) for f in find_audio(given)]
            if not files:
                raise InputError(f"{given}: no audio files (WAV, FLAC, OGG) in this folder or below")
        elif given.exists():
            files = [(given, Path(given.name))]
        else:
            raise InputError(f"{given}: no such file or folder; check the path")
        for f, rel in files:
            out = (out_dir / rel if out_dir is not None else f).with_suffix(".kan")
            key = out.resolve()
            if key in seen:
                raise OptionError(f"{seen[key]} and {f} would both be written to {out}; encode them into different "
                                  "folders (-o) or rename one")
            seen[key] = str(f)
            item = Item(str(f), str(out))
            if out.exists() and not force:
                item.status, item.error = "skipped", "output exists (--force overwrites)"
            items.append(item)
    return items


def _fail(item: Item, e: BaseException) -> None:
    item.status, item.code = "failed", exit_code(e)
    item.error = str(e) if isinstance(e, KanError) else f"{type(e).__name__}: {e}"


def distributed() -> tuple[int, int]:
    """``(rank, world size)`` from torchrun's environment (``(0, 1)`` otherwise)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def encode_many(items: list[Item], options: dict, *, device: str | torch.device | None = None,
                compile: bool | str = "auto", batch: int | None = None, force: bool = False,
                progress: Progress | None = None) -> list[Item]:
    """Encode the pending ``items`` with ``options`` (:func:`kancodec.api.encode`'s keywords),
    fitting windows of different files together; updates and returns ``items``.

    Progress events: ``"file"`` (``done`` of ``total`` files finished, ``info["item"]``) and
    the queue's ``"fit"`` events for the batch being fitted."""
    dev = resolve_device(device)
    todo = [it for it in items if it.status == "pending"]
    done_files = [0]

    def finished(item: Item) -> None:
        done_files[0] += 1
        if progress:
            progress(Event("file", done_files[0], len(todo), {"item": item}))

    ae = options.get("ae")
    queue = FitQueue(dev, compile, batch, progress, work=None if ae else _work(todo, options))
    started: dict[int, tuple[Job, Item, float]] = {}

    def store(jobs: list[Job]) -> None:
        for job in jobs:
            _, item, t0 = started.pop(id(job))
            try:
                kf = inrcodec.CODEC.finish(job, queue.plan(job)[0], time.perf_counter() - t0)
                _saved(item, kf, kf.save(Path(item.output), force), time.perf_counter() - t0)
            except (KanError, OSError, RuntimeError) as e:
                _fail(item, e)
            finished(item)

    def lost(e: BaseException) -> None:
        """A batch failed as a whole (out of memory, say): every file in the queue with it."""
        for job, item, _ in list(started.values()):
            _fail(item, e)
            finished(item)
        started.clear()
        queue.pending.clear()

    for item in todo:
        t0 = time.perf_counter()
        try:
            x, sr = read_audio(item.source)
            Path(item.output).parent.mkdir(parents=True, exist_ok=True)
            if ae:
                kf = api.encode(x, sr, device=dev, **options)
                _saved(item, kf, kf.save(Path(item.output), force), time.perf_counter() - t0)
                finished(item)
                continue
            job = inrcodec.CODEC.plan(x, sr, device=dev, name=item.source,
                                      **{k: v for k, v in options.items() if v is not None})
        except (KanError, OSError) as e:
            _fail(item, e)
            finished(item)
            continue
        started[id(job)] = (job, item, t0)
        try:
            store(queue.add(job))
        except (KanError, RuntimeError, MemoryError) as e:
            lost(e)
    try:
        store(queue.flush())
    except (KanError, RuntimeError, MemoryError) as e:
        lost(e)
    return items


def _work(items: list[Item], options: dict) -> float | None:
    """Window-steps of the whole batch from the files' headers (for the compile choice)."""
    import soundfile as sf

    steps = options.get("steps") or options.get("refine") or 200
    chunk = options.get("chunk") or inrcodec.DEFAULT_CHUNK
    total = 0.0
    for it in items:
        try:
            info = sf.info(it.source)
        except (RuntimeError, sf.LibsndfileError):
            continue
        rate = options.get("fit_sr") or info.samplerate
        total += info.channels * max(1.0, info.frames * rate / info.samplerate / chunk)
    return steps * total


def _saved(item: Item, kf, size: int, seconds: float) -> None:
    item.status, item.seconds, item.encode_s = "encoded", kf.audio.duration, seconds
    item.kbps = size * 8 / kf.audio.duration / 1000
    snr = kf.encode.get("si_snr_db")
    item.si_snr_db = float(snr) if isinstance(snr, (int, float)) else None


def gather(items: list[Item], world: int) -> list[Item]:
    """Every process's items, in rank order (``torch.distributed`` must be initialised):
    JSON through one ``all_gather`` of byte tensors, no pickle."""
    data = json.dumps([asdict(it) for it in items]).encode()
    dev = torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" \
        else torch.device("cpu")
    size = torch.tensor([len(data)], device=dev)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    torch.distributed.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    mine = torch.zeros(longest, dtype=torch.uint8, device=dev)
    mine[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(dev)
    parts = [torch.zeros_like(mine) for _ in range(world)]
    torch.distributed.all_gather(parts, mine)
    out = []
    for part, n in zip(parts, sizes):
        out += [Item(**d) for d in json.loads(bytes(part[:int(n.item())].cpu().numpy()).decode())]
    return out


def run_distributed(items: list[Item], options: dict, *, device: str, compile: bool | str, batch: int | None,
                    force: bool, progress: Progress | None, report: Callable[[list[Item]], None] | None = None,
                    encode: Callable = encode_many) -> list[Item]:
    """:func:`encode_many` of this process's share (every ``WORLD_SIZE``-th item) on its
    device, then all items gathered (each process returns the whole list). Rank 0 calls
    ``report`` with them before any process leaves (torchrun stops the others as soon as one
    exits with an error, so the summary comes first)."""
    rank, world = distributed()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
    torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
    try:
        mine = [it for i, it in enumerate(items) if i % world == rank]
        encode(mine, options, device=torch.device("cuda", local) if use_cuda else "cpu", compile=compile,
               batch=batch, force=force, progress=progress)
        order = {it.source: i for i, it in enumerate(items)}
        everyone = sorted(gather(mine, world), key=lambda it: order.get(it.source, len(order)))
        if rank == 0 and report is not None:
            report(everyone)
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()
    return everyone


def batch_exit_code(items: list[Item]) -> int:
    """0 when nothing failed; else the failures' exit code when they agree, 1 when they differ."""
    codes = {it.code for it in items if it.status == "failed"}
    return 0 if not codes else codes.pop() if len(codes) == 1 else 1


__all__ = ["Item", "collect", "encode_many", "run_distributed", "gather", "batch_exit_code", "distributed", "AUDIO_EXT"]
