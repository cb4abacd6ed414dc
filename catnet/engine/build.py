"""The engine's graphs, traced from the PyTorch network (this module needs torch; the graphs,
once saved, do not).

    answer graph   uint8 pictures (B, S, S, 3) -> logits (B,), penultimate features (B, F):
                   catnet's eval preprocessing (resize, normalise), the network with batch norm
                   folded and, with flip TTA, the mean over each picture and its mirror image;
    score graph    features (B, F) -> open-set scores (B,): scoring.openset's own formula on the
                   checkpoint's bank, run in f32 (see runtime.Compiled);
    feature graph  uint8 pictures -> the frozen part's outputs for them and for their mirror
                   images (training's feature pass).
Each is PyTorch code traced once, so the engine computes what PyTorch computes, by construction.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from catnet.data.augment import prepare_eval
from catnet.models.networks import fuse_for_inference
from catnet.scoring.openset import OpenSetCheck, output_layer


class AnswerGraph(nn.Module):
    def __init__(self, net: nn.Module, image_size: int, mean: tuple, std: tuple, tta: bool
                 ) -> None:  # fmt: skip
        super().__init__()
        self.net = fuse_for_inference(copy.deepcopy(net).float().cpu().eval())
        self.net.requires_grad_(False)
        self.net.to(memory_format=torch.channels_last)
        self.image_size, self.mean, self.std, self.tta = image_size, mean, std, tta

    def forward(self, u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = prepare_eval(u8, self.image_size, self.mean, self.std)
        n = x.shape[0]
        if self.tta:
            x = torch.cat([x, x.flip(3)])
        seen: list[torch.Tensor] = []
        handle = output_layer(self.net).register_forward_pre_hook(
            lambda _m, inputs: seen.append(inputs[0])
        )
        try:
            logits = self.net(x)
        finally:
            handle.remove()
        features = seen[0]
        if self.tta:  # as scoring.openset.mean_features: the picture and its mirror, averaged
            logits = (logits[:n] + logits[n:]) / 2
            features = (features[:n] + features[n:]) / 2
        return logits, features


class ScoreGraph(nn.Module):
    def __init__(self, check: OpenSetCheck) -> None:
        super().__init__()
        self.check = copy.deepcopy(check)
        self.check.bank = self.check.bank.float().cpu()
        if self.check.tagged is not None:
            self.check.tagged = self.check.tagged.float().cpu()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.check.scores(features)


class FeatureGraph(nn.Module):
    """net: a models.pretrained.PretrainedNet; its frozen_part(x, stages) is the graph."""

    def __init__(self, net: nn.Module, stages: int, image_size: int, mean: tuple, std: tuple
                 ) -> None:  # fmt: skip
        super().__init__()
        self.net = copy.deepcopy(net).float().cpu().eval().requires_grad_(False)
        self.stages, self.image_size, self.mean, self.std = stages, image_size, mean, std

    def forward(self, u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = prepare_eval(u8, self.image_size, self.mean, self.std)
        out = self.net.frozen_part(torch.cat([x, x.flip(3)]), self.stages)
        return out[: x.shape[0]], out[x.shape[0] :]


@contextlib.contextmanager
def no_telemetry() -> Iterator[None]:
    """OpenVINO's model converter reports usage to Google Analytics unless the user opted out
    on this machine; catnet promises no network access, so its converter gets OpenVINO's own
    do-nothing Telemetry class for the length of a conversion."""
    import openvino.tools.ovc.convert_impl as convert_impl
    import openvino.tools.ovc.telemetry_stub as stub
    import openvino.tools.ovc.telemetry_utils as telemetry_utils
    import openvino.tools.ovc.utils as ovc_utils

    modules = [m for m in (convert_impl, telemetry_utils, ovc_utils) if hasattr(m, "tm")]
    saved = [m.tm for m in modules]
    for m in modules:
        m.tm = stub
    try:
        yield
    finally:
        for m, tm in zip(modules, saved, strict=True):
            m.tm = tm


def save_graph(module: nn.Module, example: torch.Tensor, xml: Path) -> None:
    """Trace module on example (its first axis, the batch, stays free) and save the graph as
    OpenVINO IR (xml + bin) with f32 weights (OpenVINO's default would round them to fp16)."""
    import openvino as ov

    shape = [-1, *example.shape[1:]]
    dtype = ov.Type.u8 if example.dtype == torch.uint8 else ov.Type.f32
    # warnings: the tracer's notes on shape-dependent Python branches (prepare_eval's resize
    # check), which are constant for one graph
    with no_telemetry(), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Traced here rather than by OpenVINO, to skip torch.jit.trace's check_trace: a second
        # trace and a comparison that took ~1 s of the ~2.3 s conversion of the Lite2 default.
        # The engine's answers are checked against PyTorch's by tests/test_engine.py instead.
        # A function, not the module, is traced: the weights become constants of one graph,
        # instead of a TorchScript module made for each of the ~300 submodules and read back
        # attribute by attribute by the converter (0.8 -> 0.5 s for Lite0/Lite2 at 64 px, the
        # same outputs to the bit).
        module.eval().requires_grad_(False)  # constants of the graph cannot require grad
        traced = torch.jit.trace(
            lambda *inputs: module(*inputs), example, check_trace=False, strict=False
        )
        graph = ov.convert_model(traced, example_input=example, input=[(shape, dtype)])
    ov.save_model(graph, str(xml), compress_to_fp16=False)
