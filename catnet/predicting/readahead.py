"""Decode the pictures predict needs a window ahead, in worker processes, starting before torch
is even imported: `catnet predict` spends a while importing torch on one core (README, "Speed"),
time in which the other cores can already decode the first window of files."""

from __future__ import annotations

import contextlib
import itertools
import pickletools
import zipfile
from collections.abc import Iterable
from pathlib import Path

from catnet.config import PredictConfig
from catnet.data.decoding import Decoded, Decoder
from catnet.predicting.outputs import expand_inputs
from catnet.runtime import cpuload

WINDOW_BYTES = 40 * 2**20
INT_OPCODES = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"}


def peek_decode_size(checkpoint: str | Path) -> int | None:
    """The checkpoint's preprocessing decode_size, read without torch and without unpickling:
    pickletools only lists the opcodes, nothing is run. None where it cannot be found; then
    decoding simply starts after the model is loaded. A wrong answer would cost time, never
    correctness: predict compares it with the loaded model's and decodes again if they differ."""
    try:
        with zipfile.ZipFile(checkpoint) as archive:
            name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
            if archive.getinfo(name).file_size > 50_000_000:
                return None
            data = archive.read(name)
        after_key = False
        for opcode, arg, _ in pickletools.genops(data):
            if after_key and opcode.name in INT_OPCODES:
                return arg if isinstance(arg, int) and 8 <= arg <= 4096 else None
            after_key = after_key or arg == "decode_size"
    except Exception:  # not a zip, no pickle, a broken pickle...: only a hint is lost
        return None
    return None


class DecodeAhead:
    """Windows of input files and their Decoded pixels. `take` waits for
    the current window; `start_next` puts the workers on the following one. Memory: two
    windows at most."""

    def __init__(
        self,
        inputs: Iterable[str],
        size: int,
        cfg: PredictConfig,
        skip: set[str] | None = None,
        while_importing: bool = False,
    ) -> None:
        self.paths = (p for p in expand_inputs(inputs) if not skip or str(p) not in skip)
        # Up to 2,048 files and WINDOW_BYTES of pixels (two windows live at once, and their
        # batch is copied once more for the network): at 72 px 2,048 files (32 MB), at the
        # default's 260 px 206 (40 MB). Enough to keep the decoders busy while the model loads,
        # and memory bounded whatever the number of files (1,999 photos: 586 MB in all, with
        # the engine; docs/results.md).
        per_file = size * size * 3
        self.window = max(128, min(cfg.batch_size * 32, WINDOW_BYTES // per_file))
        self.decoder = Decoder(size, cfg.max_image_pixels, cfg.workers).__enter__()
        self.chunk = list(itertools.islice(self.paths, self.window))
        # while_importing: until the model is ready, one worker fewer decodes the first files,
        # leaving a core to torch's import, which every decoder would otherwise slow down.
        lead = _lead_files(self.chunk) if while_importing else 0
        self.job = self.decoder.submit(self.chunk, lead)

    def resize(self, size: int) -> None:
        """The model decodes at another size than the one guessed: decode this window again.
        Called once the model is loaded: every core decodes from now on."""
        self.job.release()
        if size != self.decoder.size:
            self.job()  # let the workers finish what they hold
            self.decoder.size = size
            self.job = self.decoder.submit(self.chunk)

    def take(self) -> tuple[list[Path], list[Decoded]]:
        return self.chunk, self.job() if self.chunk else []  # the job releases every core

    def start_next(self) -> None:
        self.chunk = list(itertools.islice(self.paths, self.window))
        self.job = self.decoder.submit(self.chunk)

    def close(self) -> None:
        self.decoder.__exit__(None, None, None)
        cpuload.forget(self.decoder.pids)  # their pids may be reused by other processes

    def __enter__(self) -> DecodeAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# JPEG bytes one core decodes in about the time torch takes to import (README, "Speed", has
# the measurement). Bytes, not a count of files: decoding time follows the coded bytes.
LEAD_BYTES = 64 * 2**20


def _lead_files(paths: list[Path]) -> int:
    """How many of the first window's files to decode while torch imports."""
    total = 0
    for i, path in enumerate(paths):
        with contextlib.suppress(OSError):  # missing: an error row later, nothing to decode
            total += path.stat().st_size
        if total > LEAD_BYTES:
            return i + 1
    return len(paths)


def start_early(
    checkpoint: str | Path, inputs: Iterable[str], cfg: PredictConfig, skip: set[str]
) -> DecodeAhead | None:
    """Start decoding at the checkpoint's size before torch is loaded (None if unknown). The
    decoders' CPU time is noted as ours: the idle-CPU sample that sets torch's threads must not
    take them for someone else's load."""
    size = peek_decode_size(checkpoint)
    if size is None:
        return None
    reader = DecodeAhead(inputs, size, cfg, skip, while_importing=True)
    cpuload.count_as_own(reader.decoder.pids)
    return reader
