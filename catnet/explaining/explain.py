"""Where the network looked: Grad-CAM for convolutional networks, sharpened by LayerCAM where the
last stage is coarse, and a gradient saliency map for the MLP (which has no convolutional maps).

Grad-CAM (Selvaraju et al., 2017) on the last convolutional stage: the map is
relu(sum_c alpha_c * A_c), where A (B, C, h, w) is that stage's output and alpha_c the mean over
h, w of d score / d A_c. The score is the cat logit for a "cat" answer and the *negative* logit
for a "not_cat" answer: a one-logit network has no second output to explain, and explaining
+logit for a not-cat answer would show the evidence against the answer (or nothing), the
inverted-map pitfall of CAM libraries with binary models (pytorch-grad-cam issue #428).

Where the last stage is coarser than 1/8 of the input (an ImageNet backbone: 7 x 7 at 224 px,
cells of 32 pixels), the Grad-CAM map is combined with LayerCAM (Jiang et al., 2021) on the
stride-8 map F: relu(sum_c relu(d score / d F_c) * F_c), per position (28 x 28 at 224 px).
Grad-CAM says which part of the picture holds the answer's evidence, LayerCAM which of its
pixels; their product (drawn as its square root, the geometric mean) keeps the first's
class-specificity at the second's resolution (Guided Grad-CAM's recipe, with a detail map that
passes the randomisation check, which guided backpropagation does not). Measured on the
pretrained model: see README, "Explain: do the heatmaps mean something?".

Written with forward hooks and torch.autograd.grad (~50 lines) rather than captum or grad-cam:
see README, "Explain", for why.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from catnet.data.augment import prepare_eval
from catnet.data.pixels import decode_square, to_square_rgb
from catnet.errors import CatnetError, DecodeError
from catnet.explaining.conv_stages import FINE_STRIDE, conv_stages

if TYPE_CHECKING:
    from catnet.predicting.network_model import CatnetModel
    from catnet.scoring.decision import Answer, Decision

# How a map is made, by how many conv layers it uses: none (the MLP), the last stage, or the
# last stage sharpened by the stride-8 one.
METHODS = ("saliency", "grad-cam", "grad-cam x layercam")
SIDES = ("not_cat", "cat")  # which side a map shows, by sign index: -1 -> not_cat, +1 -> cat


def grad_cam(
    net: nn.Module,
    layer: nn.Module,
    x: torch.Tensor,
    sign: torch.Tensor,
    fine: nn.Module | None = None,
) -> torch.Tensor:
    """x (B, 3, S, S) normalised, sign (B,) of +1 (explain cat) or -1 (explain not-cat) ->
    (B, h, w) maps, each scaled to a maximum of 1 (all 0 where nothing in the picture speaks
    for that side). Plain Grad-CAM at the layer's resolution; with `fine` (see
    conv_stages), the geometric mean of that map and LayerCAM on fine's input, at
    fine's input resolution."""
    kept: dict[str, list[torch.Tensor]] = {"last": [], "fine": []}

    def keep_output(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        kept["last"].append(output)
        # Later layers get a copy: an in-place op after this one (timm's activations) must not
        # overwrite the maps we differentiate against.
        return output.clone()

    def keep_input(_module: nn.Module, inputs: tuple) -> tuple:
        kept["fine"].append(inputs[0])
        return (inputs[0].clone(), *inputs[1:])

    handles = [layer.register_forward_hook(keep_output)]
    if fine is not None:
        handles.append(fine.register_forward_pre_hook(keep_input))
    try:
        with torch.enable_grad():
            logits = net(x.detach().requires_grad_(True)).float()
            if len(kept["last"]) != 1 or len(kept["fine"]) != (fine is not None):
                raise CatnetError("explain: a feature map ran more or less than once per pass")
            wanted = kept["last"] + kept["fine"]
            grads = torch.autograd.grad((logits * sign).sum(), wanted)
    finally:
        for handle in handles:
            handle.remove()
    maps, grad = wanted[0].detach().float(), grads[0].float()  # (B, C, h, w) each
    alpha = grad.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1): each channel's weight
    cam = _unit_max(F.relu((alpha * maps).sum(dim=1)))  # (B, h, w)
    if fine is None:
        return cam
    detail_maps, detail_grad = wanted[1].detach().float(), grads[1].float()  # (B, C', h', w')
    detail = _unit_max(F.relu((F.relu(detail_grad) * detail_maps).sum(dim=1)))  # (B, h', w')
    coarse = F.interpolate(cam[:, None], size=detail.shape[-2:], mode="bilinear")[:, 0]
    # The geometric mean: it ranks positions as the product does, and stays on each map's own
    # scale (a product of two [0, 1] maps crowds near 0 and draws as a few faint specks).
    return _unit_max(torch.sqrt(coarse * detail))  # (B, h', w')


def saliency(net: nn.Module, x: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Gradient x input, summed over colours, positive part: (B, S, S). For a network that is
    linear near x this is each pixel's share of the (signed) logit, measured from the average
    picture (normalised input 0); the positive part keeps pixels that push toward the side."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = net(x).float()
        (grads,) = torch.autograd.grad((logits * sign).sum(), x)
    return _unit_max(F.relu((grads * x.detach()).float().sum(dim=1)))


def _unit_max(maps: torch.Tensor) -> torch.Tensor:
    top = maps.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    return maps / top


@dataclass
class Explained:
    maps: torch.Tensor  # (B, h, w) float32 in [0, 1], over the centre square the model saw
    answers: list[Answer]  # predict's answer for each picture (the model's one decision)
    sides: list[str]  # which side each map shows: cat or not_cat

    @property
    def labels(self) -> list[str]:
        return [a.label for a in self.answers]


class Explainer:
    """Maps for batches of decoded squares. Runs the network as trained (batch norm unfused,
    fp32: gradients in bf16 are too coarse to rank pixels by)."""

    def __init__(
        self, model: CatnetModel, net: nn.Module | None = None, fine_stride: int = FINE_STRIDE
    ) -> None:
        """fine_stride: the stride (input pixels per position) of the map that sharpens a
        coarser last stage; the default suits real photos, the tests' 32 px drawings use 2."""
        self.model = model
        self.net = (net or model.module).eval()
        self.fine_stride = fine_stride
        stages = conv_stages(self.net, model.image_size, fine_stride)
        self.layer, self.fine = stages.last, stages.fine
        self.method = METHODS[(self.layer is not None) + (self.fine is not None)]

    @property
    def note(self) -> str:
        if self.fine is not None:
            return (
                "Grad-CAM on the last convolutional stage x LayerCAM on the stride-"
                f"{self.fine_stride} stage"
            )
        if self.layer is not None:
            return "Grad-CAM on the last convolutional stage"
        return (
            "an MLP has no convolutional feature maps, so no Grad-CAM: this is a gradient "
            "saliency map (gradient x input)"
        )

    def maps(self, batch_u8: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        """(B, S, S, 3) uint8 squares, sign (B,) +1/-1 -> (B, h, w) maps in [0, 1]."""
        m = self.model
        x = prepare_eval(batch_u8.to(m.compute.device), m.image_size, m.mean, m.std)
        sign = sign.to(x.device, torch.float32)
        if self.layer is not None:
            return grad_cam(self.net, self.layer, x, sign, self.fine).cpu()
        return saliency(self.net, x, sign).cpu()

    def explain(
        self, batch_u8: torch.Tensor, target: str = "predicted", decision: Decision | None = None
    ) -> Explained:
        """target: "predicted" (the evidence for the answer predict gives: decision, by default
        the model's own, open-set check included), "cat" or "not_cat"."""
        if target not in ("predicted", *SIDES):
            raise CatnetError(f"target must be predicted, cat or not_cat; got {target!r}")
        decision = decision or self.model.decision()
        logits, scores = self.model.logits_and_scores(batch_u8, None, decision.checks)
        answers = decision.decide(logits, scores).answers()
        # An unsure answer has no side of its own: its map shows the evidence for not-cat,
        # the side it is kept from (it is never called cat).
        sides = [a.label if a.label == "cat" else "not_cat" for a in answers]
        sides = sides if target == "predicted" else [target] * len(answers)
        sign = torch.tensor([1.0 if s == "cat" else -1.0 for s in sides])
        return Explained(self.maps(batch_u8, sign), answers, sides)


_EXPLAINERS: weakref.WeakKeyDictionary[CatnetModel, Explainer] = weakref.WeakKeyDictionary()


def explainer_for(model: CatnetModel) -> Explainer:
    """The model's Explainer, made once: finding its conv stages costs a forward pass."""
    if model not in _EXPLAINERS:
        _EXPLAINERS[model] = Explainer(model)
    return _EXPLAINERS[model]


def crop_box(width: int, height: int) -> tuple[int, int, int]:
    """(left, top, side) of the centre square decode_square keeps, in the picture's pixels."""
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side


def on_picture(cam: torch.Tensor, width: int, height: int, longest: int = 0) -> np.ndarray:
    """A (h, w) map over the centre square -> (height, width) float32 over the whole picture;
    0 outside the square, which the network never saw. longest > 0: a picture larger than
    that gets its map at most `longest` px on its longest side, the shape kept, for a display
    that stretches the map over the picture (a 64-megapixel photo's own size is 256 MB of
    float32 for a map of a few dozen cells)."""
    if longest and max(width, height) > longest:
        scale = longest / max(width, height)
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
    left, top, side = crop_box(width, height)
    full = np.zeros((height, width), dtype=np.float32)
    square = F.interpolate(cam[None, None].float(), size=(side, side), mode="bilinear")
    full[top : top + side, left : left + side] = square[0, 0].clamp(0, 1).numpy()
    return full


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) after EXIF rotation, as decode_square sees the picture."""
    width, height = img.size
    return (height, width) if img.getexif().get(0x0112) in (5, 6, 7, 8) else (width, height)


def _square_and_size(image: Image.Image | str | Path, size: int) -> tuple[np.ndarray, int, int]:
    if isinstance(image, Image.Image):
        # the size first: to_square_rgb may shrink a JPEG still being read (Image.draft)
        width, height = oriented_size(image)
        return to_square_rgb(image, size, 10**9), width, height
    pixels = decode_square(image, size)
    with Image.open(image) as img:
        return pixels, *oriented_size(img)


def explain_images(
    model: CatnetModel,
    images: Iterable[Image.Image | str | Path],
    target: str = "predicted",
    batch_size: int = 32,
    longest: int = 0,
) -> list[np.ndarray]:
    """Where the network looked: one (height, width) float32 map in [0, 1] per picture, in its
    own size (after EXIF rotation; with longest > 0, at most that many px on its longest side,
    the shape kept). target "predicted" shows the evidence for each picture's own answer (for
    not_cat, the evidence for not-cat), or "cat" / "not_cat". A file is decoded as predict
    decodes it. An unreadable file is a CatnetError naming it: no map can stand in for it."""
    explainer = explainer_for(model)
    squares, sizes = [], []
    for i, image in enumerate(images):
        try:
            pixels, width, height = _square_and_size(image, model.decode_size)
        except DecodeError as exc:
            name = image if not isinstance(image, Image.Image) else f"<image {i}>"
            raise CatnetError(f"cannot explain {name}: {exc.reason}") from None
        squares.append(pixels)
        sizes.append((width, height))
    out: list[np.ndarray] = []
    for start in range(0, len(squares), batch_size):
        batch = torch.from_numpy(np.stack(squares[start : start + batch_size]))
        maps = explainer.explain(batch, target).maps
        out += [on_picture(cam, *sizes[start + j], longest) for j, cam in enumerate(maps)]
    return out
