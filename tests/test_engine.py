"""The inference engine (catnet.engine): same answers as PyTorch, a cache that never serves a
stale graph, a clear fallback, no network, and a warm one-picture predict without torch."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TrainedRun

from catnet.data.pixels import decode_square
from catnet.engine.store import EngineStore

pytestmark = pytest.mark.slow  # every test here loads the session's trained model


def _pixels(run: TrainedRun, size: int) -> np.ndarray:
    files = sorted(p for p in run.data.rglob("*.png"))
    return np.stack([decode_square(f, size) for f in files])


def test_the_engine_answers_as_pytorch_does(trained: TrainedRun) -> None:
    from catnet.predicting.prediction import load_model

    on_torch = load_model(trained.best, engine="torch")
    on_engine = load_model(trained.best, engine="openvino")
    assert (on_torch.engine_name, on_engine.engine_name) == ("torch", "openvino")
    pixels = _pixels(trained, on_torch.decode_size)
    slots = np.arange(len(pixels))
    for tta in (False, True):
        a = on_torch.decision().decide(*on_torch.logits_and_scores_of(pixels, slots, 8, tta))
        b = on_engine.decision().decide(*on_engine.logits_and_scores_of(pixels, slots, 8, tta))
        assert a.labels == b.labels
        assert np.abs(a.p_cat - b.p_cat).max() < 0.02
        assert a.scores is not None and b.scores is not None
        assert np.abs(a.scores - b.scores).max() <= 0.01 * a.scores.max()


def test_an_edited_checkpoint_never_meets_a_stale_graph(trained: TrainedRun, tmp_path: Path
                                                        ) -> None:  # fmt: skip
    from catnet.models.checkpoint import load_checkpoint, save_checkpoint
    from catnet.predicting.prediction import answering_model, load_model

    copy = tmp_path / "best.pt"
    shutil.copy(trained.best, copy)
    load_model(copy)  # builds the graphs
    first = answering_model(copy)
    assert first.engine_name == "openvino"  # from the cache, no torch model
    payload = load_checkpoint(copy)
    payload["threshold"] = 0.9
    with torch.no_grad():
        payload["state_dict"] = {k: v * 1.5 if v.is_floating_point() else v
                                 for k, v in payload["state_dict"].items()}  # fmt: skip
    from catnet.models.checkpoint import weights_checksum

    payload["weights_sha256"] = weights_checksum(payload["state_dict"])
    save_checkpoint(payload, copy)
    assert EngineStore.of_checkpoint(copy).dir != first.store.dir  # type: ignore[attr-defined]
    second = answering_model(copy)  # cache miss: loaded with torch, graphs built anew
    assert second.threshold == 0.9 and second.hash != first.hash
    pixels = _pixels(trained, second.decode_size)
    assert not np.allclose(first.probabilities(pixels), second.probabilities(pixels))
    torch_answer = load_model(copy, engine="torch").probabilities(pixels)
    assert np.abs(second.probabilities(pixels) - torch_answer).max() < 0.02


def test_without_openvino_auto_says_so_once_and_openvino_is_an_error(
    trained: TrainedRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    from catnet.engine import runtime
    from catnet.errors import CatnetError
    from catnet.predicting import prediction

    def absent() -> None:
        raise runtime.EngineUnavailable("OpenVINO is not installed (ImportError)")

    monkeypatch.setattr(runtime, "_core", absent)
    monkeypatch.setattr(prediction, "_SAID", set())
    monkeypatch.setenv("CATNET_ENGINE_CACHE", str(Path.cwd() / "empty-engine-cache"))
    said: list[str] = []
    for _ in range(2):
        model = prediction.load_model(trained.best, on_message=said.append)
        assert model.engine_name == "torch" and model.engine is None
    assert said == ["running PyTorch instead of the inference engine: OpenVINO is not "
                    "installed (ImportError)"]  # fmt: skip
    with pytest.raises(CatnetError, match="cannot use the OpenVINO engine"):
        prediction.load_model(trained.best, engine="openvino")


def test_cached_graphs_that_do_not_compile_fall_back_to_pytorch(
    trained: TrainedRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Graphs in the cache that this OpenVINO cannot compile (a cache shared with another
    version): predict and evaluate say so and answer with PyTorch (--engine auto), no
    traceback."""
    from catnet.engine import runtime
    from catnet.evaluating.evaluation import evaluate
    from catnet.predicting import prediction

    prediction.load_model(trained.best)  # warms the cache

    def broken(self: object, xml: Path, *_args: object, **_kw: object) -> None:
        raise runtime.EngineUnavailable(f"OpenVINO could not compile {xml.name} (test)")

    monkeypatch.setattr(runtime.Compiled, "__init__", broken)
    monkeypatch.setattr(prediction, "_SAID", set())
    said: list[str] = []
    model = prediction.answering_model(trained.best, on_message=said.append)
    assert model.engine_name == "torch" and said and "could not compile" in said[0]
    assert evaluate(trained.best, trained.data).metrics["skipped"] == 1


def test_building_the_engine_touches_no_network(
    trained: TrainedRun, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """OpenVINO's converter reports usage to Google Analytics by default (build.no_telemetry)."""
    from catnet.predicting.prediction import load_model

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("CATNET_ENGINE_CACHE", str(tmp_path / "fresh"))
    assert load_model(trained.best, engine="openvino").engine_name == "openvino"


def test_a_warm_one_picture_predict_does_not_import_torch(trained: TrainedRun) -> None:
    """A real process: what it imports is the point."""
    from catnet.predicting.prediction import load_model

    load_model(trained.best)  # warms the cache
    picture = next(trained.data.rglob("*.png"))
    code = (
        "import sys\nfrom catnet.cli import main\nsys.argv = ['catnet', 'predict', "
        f"{str(trained.best)!r}, {str(picture)!r}, '--json']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "loaded = sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules)\n"
        "print('LOADED', loaded)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout, done.stdout
    assert '"label": ' in done.stdout and '"error": ""' in done.stdout


def test_a_warm_evaluate_builds_no_network(
    trained: TrainedRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    """evaluate answers as predict does: from the engine's cache when the checkpoint's graphs
    are there, without building the PyTorch network (for the default model, importing timm
    alone took ~2 s of a fresh evaluate), with the same metrics."""
    from catnet.evaluating.evaluation import evaluate
    from catnet.predicting import network_model
    from catnet.predicting.prediction import load_model

    load_model(trained.best)  # warms the cache
    before = evaluate(trained.best, trained.data).metrics

    def refuse(*_args: object, **_kw: object) -> None:
        raise AssertionError("evaluate built the network although its graphs were cached")

    monkeypatch.setattr(network_model.CatnetModel, "__init__", refuse)
    after = evaluate(trained.best, trained.data).metrics
    assert after["accuracy"] == before["accuracy"] and after["skipped"] == 1
    assert after["roc_auc"] == pytest.approx(before["roc_auc"])


def test_training_features_from_the_engine_match_pytorch(tmp_path: Path) -> None:
    from catnet.models.pretrained import PretrainedNet
    from catnet.runtime.compute import select_compute
    from catnet.training.features import FrozenPass, frozen_features

    net = PretrainedNet("tf_efficientnet_lite0").eval()  # random weights: no download
    compute = select_compute("cpu", "fp32")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    slots = np.arange(5)
    on_engine = FrozenPass(net, 0, 64, (0.5,) * 3, (0.5,) * 3, compute, "openvino")
    on_torch = FrozenPass(net, 0, 64, (0.5,) * 3, (0.5,) * 3, compute, "torch")
    assert on_engine.name.startswith("openvino-") and on_torch.name == "cpu-fp32"
    for a, b in zip(frozen_features(on_engine, pixels, slots, 2),
                    frozen_features(on_torch, pixels, slots, 2), strict=True):  # fmt: skip
        assert a.shape == b.shape == (5, net.backbone.num_features)
        cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
        assert cos.min() > 0.99
