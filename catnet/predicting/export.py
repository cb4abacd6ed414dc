"""`catnet export`: the network as ONNX or TorchScript, for serving without catnet.

The exported graph takes what `load_model(...).module` takes — normalised float pixels
(B, 3, image_size, image_size) — and returns the same logits (B,). The preprocessing constants
(sizes, mean, std) and the decision (scoring.decision: threshold, temperature, the open-set
rule) travel in the file's metadata, so a server can reproduce p(cat) and predict's label
exactly. A checkpoint with the open-set check exports a second output, unfamiliar_score (B,),
computed in the graph (the user's tagged pictures included), and the rule in the metadata:
unfamiliar when the score is above its threshold, and then never cat.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from catnet.errors import CatnetError
from catnet.predicting.network_model import CatnetModel
from catnet.predicting.prediction import load_model
from catnet.runtime.files import atomic_write
from catnet.scoring.decision import RULE, Decision
from catnet.scoring.openset import WithOpenSet


def metadata(model: CatnetModel) -> dict[str, str]:
    """The preprocessing and the decision (scoring.decision: the rule predict applies,
    stated by the same code) as strings; "decision" holds the whole rule as JSON."""
    pre = model.payload["preprocessing"]
    decision = model.decision()
    return {
        "catnet_version": str(model.payload["catnet_version"]),
        "model_hash": model.hash,
        "input": "float32 (batch, 3, image_size, image_size), RGB, (pixel/255 - mean) / std",
        "output": f"logits (batch,); {RULE}",
        "image_size": str(pre["image_size"]),
        "decode_size": str(pre["decode_size"]),
        "resize": str(pre.get("resize", "")),
        "mean": json.dumps(pre["mean"]),
        "std": json.dumps(pre["std"]),
        "classes": json.dumps(model.payload["classes"]),
        **decision.metadata(),
        **_open_set_metadata(model, decision),
    }


def _open_set_metadata(model: CatnetModel, decision: Decision) -> dict[str, str]:
    if model.open_set is None:
        return {}
    rule = {
        "output": "unfamiliar_score",
        "threshold": decision.unfamiliar_above,
        "k": model.open_set.k,
        "rule": "unfamiliar if unfamiliar_score > threshold; an unfamiliar picture is never cat "
        "(a picture the user tagged, or one with its content, scores as familiar)",
    }
    return {"open_set": json.dumps(rule)}


def _exported_module(model: CatnetModel) -> tuple[torch.nn.Module, list[str]]:
    """The fp32 network to export, with the open-set score as a second output when the
    checkpoint has the check; and the names of its outputs."""
    module = model.module.float().eval().to(memory_format=torch.contiguous_format)
    if model.open_set is None:
        return module, ["logits"]
    return WithOpenSet(module, model.open_set).eval(), ["logits", "unfamiliar_score"]


def export(
    checkpoint: str | Path, fmt: str, out: str | Path, check_with: list[Path] | None = None
) -> dict[str, Any]:
    """Write the export and check it against PyTorch on the pictures `check_with` (random
    tensors if none); returns {"path", "max_abs_diff", "checked_on"}."""
    model = load_model(checkpoint, device="cpu")
    module, outputs = _exported_module(model)
    example = torch.randn(2, 3, model.image_size, model.image_size)
    out = Path(out)
    if fmt == "torchscript":
        buf = io.BytesIO()  # built in memory, then written in one atomic step
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # tracing's deprecation notice; the trace is checked below
            traced = torch.jit.trace(module, example)
            torch.jit.save(traced, buf, _extra_files={"catnet.json": json.dumps(metadata(model))})
        data = buf.getvalue()
    elif fmt == "onnx":
        data = _export_onnx(module, example, metadata(model), outputs)
    else:
        raise CatnetError(f"--format must be onnx or torchscript, not {fmt!r}")
    atomic_write(out, lambda fh: fh.write(data), what="the export")  # the old one or the new
    pixels = picture_batch(model, check_with) if check_with else None
    diff = check_equivalence(model, fmt, out, pixels)
    return {
        "path": str(out),
        "max_abs_diff": diff,
        "checked_on": len(check_with or []) or "random tensors",
    }


def _export_onnx(
    module: torch.nn.Module, example: torch.Tensor, meta: dict[str, str], outputs: list[str]
) -> bytes:
    try:
        import onnx
    except ImportError:
        raise CatnetError(
            "ONNX export needs the onnx package: pip install 'catnet[export]'"
        ) from None
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (example,), buf, dynamo=False, input_names=["pixels"],
            output_names=outputs, dynamic_axes={name: {0: "batch"} for name in ["pixels", *outputs]},
        )  # fmt: skip
    graph = onnx.load_from_string(buf.getvalue())
    for key, value in meta.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    return graph.SerializeToString()


def run_export(fmt: str, out: Path, pixels: torch.Tensor) -> np.ndarray:
    """Logits from the exported file alone (onnxruntime for ONNX)."""
    return run_export_outputs(fmt, out, pixels)[0]


def run_export_outputs(fmt: str, out: Path, pixels: torch.Tensor) -> list[np.ndarray]:
    """Every output of the exported file: [logits] or [logits, unfamiliar_score]."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice
            result = torch.jit.load(str(out))(pixels)
        parts = result if isinstance(result, tuple) else (result,)
        return [p.detach().numpy() for p in parts]
    try:
        import onnxruntime
    except ImportError:
        raise CatnetError(
            "checking an ONNX export needs onnxruntime: pip install 'catnet[export]'"
        ) from None
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return list(session.run(None, {"pixels": pixels.numpy()}))


def check_equivalence(
    model: CatnetModel, fmt: str, out: Path, pixels: torch.Tensor | None = None
) -> float:
    """Largest |logit difference| between the export and PyTorch (fp32) on the given batch."""
    if pixels is None:
        pixels = torch.randn(4, 3, model.image_size, model.image_size)
    module, _ = _exported_module(model)
    with torch.no_grad():
        reference = module(pixels)
    reference = reference if isinstance(reference, tuple) else (reference,)
    exported = run_export_outputs(fmt, out, pixels)
    return max(float(np.abs(e - r.numpy()).max()) for e, r in zip(exported, reference, strict=True))


def picture_batch(model: CatnetModel, paths: list[Path]) -> torch.Tensor:
    """Normalised (B, 3, S, S) float pixels of real pictures, exactly as predict prepares them."""
    from catnet.data.augment import prepare_eval
    from catnet.data.pixels import decode_square

    pixels = torch.from_numpy(np.stack([decode_square(p, model.decode_size) for p in paths]))
    return prepare_eval(pixels, model.image_size, model.mean, model.std).contiguous().float()
