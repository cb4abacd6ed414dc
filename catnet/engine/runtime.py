"""Run a graph on OpenVINO, torch-free: importing this module, OpenVINO and NumPy takes ~0.25 s
where importing torch takes ~1.7 s, so a one-picture predict on a warm cache answers in well
under a second.

Why OpenVINO (measured on 2 cores with AMX, a trained default checkpoint, batch 64 at 224 px,
scripts/benchmark_engine.py): PyTorch as catnet ran it (bf16 autocast, batch norm folded,
channels-last) 93 images/s; ONNX Runtime fp32 129; OpenVINO fp32 180, OpenVINO bf16 346. ONNX
Runtime has no bf16 kernels for these convolutions on CPUs; OpenVINO picks bf16 by itself where
the CPU has it (AMX or AVX512-BF16) and fp32 elsewhere.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from catnet.config import ENGINES
from catnet.errors import CatnetError
from catnet.runtime.cpuload import free_threads


class EngineUnavailable(Exception):
    """OpenVINO cannot run here (absent, no usable CPU, a graph that does not compile): `auto`
    says why once and uses PyTorch; `openvino` turns it into a CatnetError."""


def check_engine_name(name: str) -> str:
    if name not in ENGINES:
        raise CatnetError(f"unknown engine {name!r}", hint=f"use one of {', '.join(ENGINES)}")
    return name


@functools.cache
def _core() -> Any:
    # No usage statistics are ever sent: OpenVINO's runtime has no telemetry, and its model
    # converter's is stubbed out where catnet calls it (build.no_telemetry).
    try:
        import openvino as ov
    except Exception as exc:  # ImportError, or a broken install raising anything at import
        raise EngineUnavailable(f"OpenVINO is not installed ({type(exc).__name__})") from None
    core = ov.Core()
    if "CPU" not in core.available_devices:
        raise EngineUnavailable("OpenVINO finds no usable CPU device")
    return core


def precision() -> str:
    """What OpenVINO computes in on this CPU: bf16 where it has AMX or AVX512-BF16, else f32."""
    hint = str(_core().get_property("CPU", "INFERENCE_PRECISION_HINT"))
    return "bf16" if "bfloat16" in hint or "bf16" in hint else "f32"


# Pictures per engine call, whatever batch the caller hands over. OpenVINO holds every
# intermediate tensor of a call: measured on the Lite2 default at 260 px, 2 cores, slices of
# 8/16/32/64/256 ran 299/304/302/274/222 images/s, and each doubling past 16 costs ~100 MB.
ENGINE_BATCH = 16


class Compiled:
    """One graph compiled for the CPU: call it with NumPy arrays, get NumPy arrays back.

    `exact`: compute in f32 whatever the CPU offers (the open-set score subtracts cosines close
    to 1, where bf16's 8-bit mantissa would lose the distance). `cache_dir`: OpenVINO keeps the
    compiled blob there, so the next process skips compilation (~1 s -> ~0.05 s)."""

    def __init__(self, xml: Path, cache_dir: Path | None = None, exact: bool = False) -> None:
        core = _core()
        # As many threads as torch would take (cpuload.free_threads): OpenVINO's default, every
        # core, stalls on cores that another process keeps busy.
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY",
                                  "INFERENCE_NUM_THREADS": free_threads()}  # fmt: skip
        if exact:
            config["INFERENCE_PRECISION_HINT"] = "f32"
        if cache_dir is not None:
            config["CACHE_DIR"] = str(cache_dir)
        try:
            self.model = core.compile_model(str(xml), "CPU", config)
        except Exception as exc:
            raise EngineUnavailable(
                f"OpenVINO could not compile {xml.name} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:160] if str(exc) else ''})"
            ) from None
        self.request = self.model.create_infer_request()

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        result = self.request.infer(list(inputs))
        # copies: the request reuses its output buffers on the next call
        return [np.array(result[out]) for out in self.model.outputs]


def batched(run: Callable[..., list[np.ndarray]], batch: np.ndarray, batch_size: int
            ) -> list[np.ndarray]:  # fmt: skip
    """run() over batch (n, ...) in slices of batch_size, outputs joined along the first axis."""
    parts = [run(batch[i : i + batch_size]) for i in range(0, len(batch), batch_size)]
    if not parts:
        return []
    return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]
