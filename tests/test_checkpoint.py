"""The checkpoint format: plain tensors and primitives, safe to load, checked on load."""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TrainedRun

import catnet
from catnet.errors import CatnetError
from catnet.models.checkpoint import (
    FORMAT_VERSION,
    load_checkpoint,
    make_checkpoint,
    save_checkpoint,
    weights_checksum,
)
from catnet.models.networks import CNN, MLP, build_model

REQUIRED = (
    "arch",
    "state_dict",
    "classes",
    "preprocessing",
    "threshold",
    "temperature",
    "train_config",
    "metrics",
    "catnet_version",
)


def plain_load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_best_loads_with_plain_weights_only_torch_load(trained: TrainedRun) -> None:
    payload = plain_load(trained.best)
    for key in REQUIRED:
        assert key in payload, key
    assert payload["format"] == "catnet-checkpoint"
    assert payload["format_version"] == FORMAT_VERSION
    assert payload["catnet_version"] == catnet.__version__
    assert payload["arch"]["type"] == "cnn"
    assert payload["classes"]["positive"] == "cats"
    assert payload["classes"]["labels"] == ["not_cat", "cat"]
    assert payload["preprocessing"]["image_size"] == 28  # the evaluation size
    assert payload["preprocessing"]["train_image_size"] == 24
    assert payload["preprocessing"]["decode_size"] >= 24
    assert 0.0 < payload["threshold"] < 1.0
    assert payload["temperature"] > 0
    assert payload["train_config"]["width"] == 8
    assert {"accuracy", "roc_auc", "confusion"} <= set(payload["metrics"])
    assert payload["weights_sha256"] == weights_checksum(payload["state_dict"])
    assert "resume" not in payload  # best.pt carries no optimizer state


def test_last_has_resume_state_and_also_loads_plainly(trained: TrainedRun) -> None:
    payload = plain_load(trained.last)
    assert payload["resume"]["epoch"] == 2
    assert len(payload["resume"]["history"]) == 2
    assert "optimizer" in payload["resume"]


def test_load_model_gives_the_same_logits_as_the_stored_weights(trained: TrainedRun) -> None:
    payload = plain_load(trained.best)
    reference = build_model(payload["arch"])
    reference.load_state_dict(payload["state_dict"])
    reference.eval()
    model = catnet.load_model(trained.best, device="cpu")
    x = torch.randn(5, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(x)
        got = model.module(x.contiguous(memory_format=torch.channels_last))
    assert got.shape == (5,)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_save_load_round_trip(tmp_path: Path, kind: str) -> None:
    torch.manual_seed(1)
    if kind == "cnn":
        arch = {"type": "cnn", "image_size": 16, "width": 4, "depth": 2}
        module: torch.nn.Module = CNN(4, 2, "relu", 0.0)
    else:
        arch = {"type": "mlp", "image_size": 16, "hidden": [8, 4]}
        module = MLP(16, [8, 4], "gelu", 0.0)
    arch |= {"activation": "relu" if kind == "cnn" else "gelu", "dropout": 0.0}
    module.eval()
    x = torch.randn(3, 3, 16, 16)
    payload = make_checkpoint(
        module.state_dict(),
        arch=arch,
        classes={"positive": "cats", "names": ["cats", "dogs"], "labels": ["not_cat", "cat"]},
        preprocessing={"decode_size": 20, "image_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3},
        threshold=0.4,
        temperature=1.5,
    )
    path = save_checkpoint(payload, tmp_path / "sub" / "model.pt")
    assert not [p for p in path.parent.iterdir() if p.name != "model.pt"]  # no temp files left
    model = catnet.load_model(path, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(model.module(x), module(x), rtol=1e-6, atol=1e-6)
    assert (model.image_size, model.threshold, model.temperature) == (16, 0.4, 1.5)


# --- refused files --------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CatnetError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_a_folder_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CatnetError, match="not found"):
        load_checkpoint(tmp_path)


def test_non_catnet_torch_file(tmp_path: Path) -> None:
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CatnetError, match="not a catnet checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(CatnetError, match="not a catnet checkpoint"):
        load_checkpoint(tmp_path / "tensor.pt")


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.05])
def test_truncated_file(tmp_path: Path, trained: TrainedRun, keep: float) -> None:
    data = trained.best.read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CatnetError) as info:
        load_checkpoint(path)
    assert str(path) in info.value.message


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.pt").touch()
    with pytest.raises(CatnetError):
        load_checkpoint(tmp_path / "empty.pt")


@pytest.mark.parametrize("seed", [0, 1, 3])
def test_garbage_file(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(random.Random(seed).randbytes(4000))
    with pytest.raises(CatnetError):
        load_checkpoint(path)


def test_a_picture_is_not_a_checkpoint(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "cat.png")
    with pytest.raises(CatnetError):
        load_checkpoint(tmp_path / "cat.png")


@pytest.mark.parametrize(
    "content",
    [b"hello world this is not a checkpoint\n", random.Random(2).randbytes(4000)],
    ids=["text", "random-bytes-seed2"],
)
def test_any_bytes_give_a_catnet_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notes.pt"
    path.write_bytes(content)
    with pytest.raises(CatnetError):
        load_checkpoint(path)


def test_wrong_format_version(tmp_path: Path, trained: TrainedRun) -> None:
    payload = plain_load(trained.best)
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(CatnetError, match="format") as info:
        load_checkpoint(tmp_path / "future.pt")
    assert str(FORMAT_VERSION + 1) in info.value.message


def test_missing_required_key(tmp_path: Path, trained: TrainedRun) -> None:
    payload = plain_load(trained.best)
    del payload["preprocessing"]
    torch.save(payload, tmp_path / "partial.pt")
    with pytest.raises(CatnetError, match="preprocessing"):
        load_checkpoint(tmp_path / "partial.pt")


def test_flipped_weight_fails_the_checksum(tmp_path: Path, trained: TrainedRun) -> None:
    payload = plain_load(trained.best)
    name = next(k for k, v in payload["state_dict"].items() if v.is_floating_point())
    tensor = payload["state_dict"][name]  # may be channels_last: index, don't view
    first = (0,) * tensor.dim()
    tensor[first] = -tensor[first] + 1.0
    torch.save(payload, tmp_path / "flipped.pt")
    with pytest.raises(CatnetError, match="checksum"):
        load_checkpoint(tmp_path / "flipped.pt")


def test_one_flipped_bit_in_the_file_is_caught(tmp_path: Path, trained: TrainedRun) -> None:
    """Corrupt a byte inside the largest tensor's storage, not the zip structure."""
    data = bytearray(trained.best.read_bytes())
    payload = plain_load(trained.best)
    biggest = max(payload["state_dict"].values(), key=lambda t: t.numel())
    needle = bytes(biggest.untyped_storage().tolist()[:8])  # raw bytes as stored
    at = bytes(data).find(needle)
    assert at > 0
    data[at + 3] ^= 0x10
    path = tmp_path / "bitrot.pt"
    path.write_bytes(bytes(data))
    with pytest.raises(CatnetError):
        load_checkpoint(path)


class Evil:
    """Unpickling this object would create a file: a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_the_evil_payload_really_runs_code_when_unpickled(tmp_path: Path) -> None:
    """Guard for the next test: the payload would create its marker if it were unpickled."""
    marker = tmp_path / "pwned-control"
    pickle.loads(pickle.dumps({"x": Evil(marker)}))
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    payload = {"format": "catnet-checkpoint", "format_version": FORMAT_VERSION, "x": Evil(marker)}
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with path.open("wb") as fh:
            pickle.dump(payload, fh)
    with pytest.raises(CatnetError) as info:
        catnet.load_model(path)
    assert not marker.exists()
    assert str(path) in info.value.message
