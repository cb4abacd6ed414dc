"""The model on PyTorch: the network a checkpoint describes, for everything that needs torch
(explain's gradients, export, the labelling page's retraining) and as the forward pass where
the engine cannot run. Its no-gradient forward passes go to the engine when one is attached
(`attach_engine`), so every command answers with the same numbers."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from catnet.engine.runtime import EngineUnavailable
from catnet.engine.store import EngineStore
from catnet.models.forward import logits_for
from catnet.models.networks import fuse_for_inference, network_from
from catnet.predicting.answering import AnsweringModel, EngineModel, ModelCard, answer_graph
from catnet.runtime.compute import Compute, select_compute
from catnet.scoring.openset import KEY as OPEN_SET_KEY
from catnet.scoring.openset import OpenSetCheck, capture_features, mean_features


class CatnetModel(AnsweringModel):
    """A trained network plus everything needed to feed it pictures the way it was trained."""

    def __init__(self, payload: dict[str, Any], path: Path, device: str = "auto") -> None:
        super().__init__(ModelCard.from_payload(payload), path)
        self.payload = payload
        self.compute: Compute = select_compute(device, "auto")
        self.module: nn.Module = network_from(payload)
        self.module.to(self.compute.device, memory_format=torch.channels_last).eval()
        # The same network with batch norm folded into the convs: what predict and evaluate run.
        self.inference_module = fuse_for_inference(copy.deepcopy(self.module))
        # None for checkpoints written before the open-set check existed: the check is off.
        self.open_set = OpenSetCheck.from_payload(payload.get(OPEN_SET_KEY), self.compute.device)
        self.engine: EngineModel | None = None  # attach_engine: the fast forward pass

    def logits_and_scores(
        self, batch_u8: Any, tta: bool | None = None, open_set: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        tta = self.tta if tta is None else tta
        if self.engine is not None:
            if not self.engine.store.has(answer_graph(tta)):  # the other TTA: build it now
                attach_engine(self, tta, self.engine.store.dir.name)
            return self.engine.logits_and_scores(batch_u8, tta, open_set)
        check = self.open_set if open_set else None
        batch = torch.as_tensor(batch_u8)
        with capture_features(self.inference_module) if check else contextlib.nullcontext() as seen:
            logits = logits_for(
                self.inference_module, batch, self.image_size, self.compute, tta,
                self.mean, self.std,
            )  # fmt: skip
        if check is None or seen is None:
            return logits.numpy(), None
        return logits.numpy(), check.scores(mean_features(seen, len(batch))).cpu().numpy()


def attach_engine(model: CatnetModel, tta: bool | None = None, key: str = "",
                  on_message: Callable[[str], None] | None = None) -> EngineModel:  # fmt: skip
    """Build (or find) the checkpoint's graphs in the engine cache and hand the model's
    no-gradient forward passes to OpenVINO. key: the cache folder's name (default: from the
    checkpoint file's bytes; a Ray worker gets the driver's). Raises EngineUnavailable
    (nothing attached) when OpenVINO cannot run here or the cache cannot be written."""
    from catnet.engine.build import AnswerGraph, ScoreGraph, save_graph
    from catnet.engine.runtime import precision

    if model.compute.device.type != "cpu":
        raise EngineUnavailable(f"the engine runs on CPUs; this model is on {model.compute.name}")
    precision()  # OpenVINO present and a CPU device found, or EngineUnavailable
    store = EngineStore(key) if key else EngineStore.of_checkpoint(model.path)
    tta = model.tta if tta is None else tta
    todo = [n for n in (answer_graph(tta), "score") if not store.has(n)]
    if model.open_set is None and "score" in todo:
        todo.remove("score")
    if todo and on_message:
        on_message("building the inference engine's graph for this checkpoint (once)")
    s = model.decode_size
    for graph in todo:
        if graph == "score":
            assert model.open_set is not None
            net: nn.Module = ScoreGraph(model.open_set)
            example = torch.zeros(2, model.open_set.bank.shape[1])  # (B, F) features
        else:
            net = AnswerGraph(
                model.module, model.image_size, model.mean, model.std, graph != "answer"
            )
            example = torch.zeros(2, s, s, 3, dtype=torch.uint8)  # (B, S, S, 3) pictures
        store.write_graph(
            graph, lambda xml, net=net, example=example: save_graph(net, example, xml)
        )
    if store.card() != model.card.to_json():
        store.write_card(model.card.to_json())
    engine = EngineModel(model.card, model.path, store)
    engine.compile(tta)  # now: a graph that does not compile fails here, not at the first batch
    model.engine, model.engine_name = engine, "openvino"
    return engine
