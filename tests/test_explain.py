"""catnet explain: Grad-CAM and saliency maps are computed right (both logit signs) and mean
something (deletion, randomisation) on a small trained model."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import single_thread, tiny_config

# The deletion and randomisation checks are benchmark code (scripts/benchmark_explain.py), not
# part of a command: they live beside the scripts that use them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from explain_checks import (
    class_probability,
    deletion_drops,
    grey_out,
    randomisation_correlation,
    randomised,
    spearman,
    top_mask,
    upsample,
)

from catnet.explaining.conv_stages import conv_stages, feature_layer, fine_layer
from catnet.explaining.explain import Explainer, grad_cam, on_picture, saliency
from catnet.models.networks import CNN, MLP

# ---------------------------------------------------------------- the maps themselves


def test_feature_layer_is_the_last_conv_stage() -> None:
    cnn = CNN(width=4, depth=2).eval()
    assert feature_layer(cnn, 24) is cnn.features  # the map before global pooling
    assert feature_layer(MLP(8, [4]).eval(), 8) is None  # no feature maps: saliency instead


def test_fine_layer_only_where_the_last_stage_is_coarse() -> None:
    """LayerCAM sharpening needs a stride-8 map finer than the last stage's: the default CNN's
    last stage at 72 px is 9 x 9 (stride 8), nothing to add; four stages end coarser (4 x 4 at
    72 px, 6 x 6 at 100 px), and the stride-8 map is what the fourth stage's max-pool takes in
    (9 x 9; at 100 px 12 x 12, rounded down as the pools round)."""
    cnn = CNN(width=4, depth=3).eval()
    stages = conv_stages(cnn, 72)
    assert stages.last is cnn.features and stages.last_side == 9
    assert stages.fine is None
    deep = CNN(width=4, depth=4).eval()
    assert isinstance(deep.features[11], torch.nn.MaxPool2d)
    for size, last in ((72, 4), (100, 6)):
        assert conv_stages(deep, size).last_side == last
        assert fine_layer(deep, size) is deep.features[11]
    assert fine_layer(deep, 72, stride=2) is deep.features[5]  # 36 x 36 in, 18 x 18 out


def test_randomised_network_measures_batch_norm_on_the_batch() -> None:
    """Re-initialised batch norm keeps mean 0 / variance 1 unless calibrated; calibrated, its
    running mean is the batch's (the first norm's input is the first conv's output on x)."""
    torch.manual_seed(3)
    net = CNN(width=4, depth=2).eval()
    x = torch.randn(6, 3, 24, 24) * 2 + 1
    plain = randomised(net, 0)
    assert torch.equal(plain.features[0][1].running_mean, torch.zeros(4))
    calibrated = randomised(net, 0, x)
    conv, norm = calibrated.features[0][0], calibrated.features[0][1]
    with torch.no_grad():
        first = conv(x)
    assert torch.allclose(norm.running_mean, first.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(norm.running_var, first.var(dim=(0, 2, 3)), rtol=1e-4)
    assert not calibrated.training and not norm.training


@pytest.mark.slow
def test_feature_layer_on_a_timm_backbone() -> None:
    """The pretrained model (timm tf_efficientnet_lite0) is found the same way: the block after
    conv_head, not global pooling's (B, C, 1, 1) output. Built without weights: no download."""
    timm = pytest.importorskip("timm")
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1).eval()
    layer = feature_layer(net, 64)
    assert layer is net.bn2
    x = torch.randn(2, 3, 64, 64)

    class OneLogit(torch.nn.Module):  # catnet networks return (B,) logits
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x).squeeze(1)

    maps = grad_cam(OneLogit().eval(), layer, x, torch.tensor([1.0, -1.0]))
    assert maps.shape == (2, 2, 2) and torch.isfinite(maps).all()
    # 2 x 2 at 64 px is stride 32: the sharpening map is blocks.2's 8 x 8 output, blocks.3's input.
    fine = fine_layer(net, 64)
    assert fine is net.blocks[3]
    maps = grad_cam(OneLogit().eval(), layer, x, torch.tensor([1.0, -1.0]), fine)
    assert maps.shape == (2, 8, 8) and torch.isfinite(maps).all()


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_grad_cam_matches_the_formula(sign: float) -> None:
    """Against Grad-CAM written out by hand on the CNN's two halves: alpha_c = mean over
    positions of d(sign * logit)/dA_c, map = relu(sum_c alpha_c A_c), scaled to max 1."""
    torch.manual_seed(0)
    net = CNN(width=4, depth=2).eval()
    x = torch.randn(3, 3, 24, 24)
    feats = net.features(x)
    logits = net.head(torch.cat([feats.mean(dim=(2, 3)), feats.amax(dim=(2, 3))], dim=1))[:, 0]
    (grads,) = torch.autograd.grad((sign * logits).sum(), feats)
    expected = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * feats).sum(1)).detach()
    expected = expected / expected.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    got = grad_cam(net, net.features, x, torch.full((3,), sign))
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_sharpened_grad_cam_matches_the_formula(sign: float) -> None:
    """Grad-CAM on the last stage (6 x 6) times LayerCAM on the finer map F the stage-2 pool
    takes in (12 x 12), written out by hand: relu(sum_c relu(dS/dF_c) * F_c), each map scaled
    to max 1, Grad-CAM upsampled bilinearly, their geometric mean scaled to max 1."""
    torch.manual_seed(0)
    net = CNN(width=4, depth=2).eval()
    x = torch.randn(3, 3, 24, 24)
    fine_maps = net.features[:5](x)  # (3, 4, 12, 12)
    feats = net.features[5:](fine_maps)  # (3, 8, 6, 6)
    logits = net.head(torch.cat([feats.mean(dim=(2, 3)), feats.amax(dim=(2, 3))], dim=1))[:, 0]
    g_fine, g_last = torch.autograd.grad((sign * logits).sum(), [fine_maps, feats])

    def unit(m: torch.Tensor) -> torch.Tensor:
        return m / m.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)

    cam = unit(torch.relu((g_last.mean(dim=(2, 3), keepdim=True) * feats).sum(1))).detach()
    detail = unit(torch.relu((torch.relu(g_fine) * fine_maps).sum(1))).detach()
    up = torch.nn.functional.interpolate(cam[:, None], size=(12, 12), mode="bilinear")[:, 0]
    expected = unit(torch.sqrt(up * detail))  # the geometric mean of the two maps
    got = grad_cam(net, net.features, x, torch.full((3,), sign), net.features[5])
    assert got.shape == (3, 12, 12) and got.amax() > 0
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_grad_cam_matches_captum(sign: float) -> None:
    """Where captum is installed (it is not a dependency): the same maps as its LayerGradCam
    on the same layer, for both signs (measured: identical, max difference 0.0)."""
    captum_attr = pytest.importorskip("captum.attr")
    torch.manual_seed(0)
    net = CNN(width=8, depth=3).eval()
    x = torch.randn(6, 3, 32, 32)
    cam = captum_attr.LayerGradCam(lambda t: sign * net(t), net.features)
    theirs = cam.attribute(x, relu_attributions=True)[:, 0].detach()
    theirs = theirs / theirs.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    ours = grad_cam(net, net.features, x, torch.full((6,), sign))
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_both_signs_give_different_maps() -> None:
    """The one-logit pitfall: explaining not_cat must use the negative logit, whose map is not
    the cat map: the positive parts of opposite sums live in different places. (An untrained
    network may have no evidence at all for one side; the trained-model test checks that
    not_cat maps are not empty.)"""
    torch.manual_seed(1)
    net = CNN(width=4, depth=2).eval()
    x = torch.randn(4, 3, 24, 24)
    cat = grad_cam(net, net.features, x, torch.ones(4))
    not_cat = grad_cam(net, net.features, x, -torch.ones(4))
    assert not torch.allclose(cat, not_cat)
    both = (cat > 0) & (not_cat > 0)
    assert not both.any()  # a position's weighted sum is positive for one side at most


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_saliency_is_each_pixels_share_of_the_logit(sign: float) -> None:
    """For a linear network (an MLP without hidden layers), gradient x input is exactly each
    pixel's share of the logit: relu(sign * sum over colours of w * x)."""
    torch.manual_seed(2)
    net = MLP(8, []).eval()
    x = torch.randn(2, 3, 8, 8)
    weight = net.net[1].weight.detach().view(3, 8, 8)
    expected = torch.relu(sign * (weight * x).sum(1))
    expected = expected / expected.flatten(1).amax(1).view(-1, 1, 1)
    assert torch.allclose(saliency(net, x, torch.full((2,), sign)), expected, atol=1e-5)


def test_on_picture_covers_only_the_square_the_network_saw() -> None:
    full = on_picture(torch.ones(3, 3), 40, 20)  # landscape: the centre 20 x 20 square
    assert full.shape == (20, 40)
    assert (
        np.allclose(full[:, 10:30], 1) and (full[:, :10] == 0).all() and (full[:, 30:] == 0).all()
    )


def test_spearman_ranks_ties_and_constants() -> None:
    a = torch.tensor([[0.0, 0.0, 1.0, 2.0, 3.0]])
    assert spearman(a, a).item() == pytest.approx(1.0)
    assert spearman(a, -a).item() == pytest.approx(-1.0)
    assert spearman(a, torch.zeros(1, 5)).item() == 0.0  # an empty map ranks nothing
    stats = pytest.importorskip("scipy.stats")
    b = torch.tensor([[3.0, 1.0, 1.0, 0.0, 2.0]])
    assert spearman(a, b).item() == pytest.approx(stats.spearmanr(a[0], b[0])[0], abs=1e-6)


def test_top_mask_takes_exactly_the_share_asked() -> None:
    scores = torch.zeros(2, 10, 10)
    scores[0, :2] = 1.0  # 20 clear winners in picture 0; picture 1 all ties
    mask = top_mask(scores, 0.2, torch.Generator().manual_seed(0))
    assert mask.sum(dim=(1, 2)).tolist() == [20, 20]
    assert mask[0, :2].all()


# ---------------------------------------------------------------- do the maps mean something?


@pytest.fixture(scope="module")
def shapes_model(tmp_path_factory: pytest.TempPathFactory):
    """A small CNN trained on the demo's drawings (cats, cars, birds, houses at 32 px; val ~90 %),
    and 120 new drawings to explain. A cat's evidence is a known shape at a known place."""
    from catnet import load_model
    from catnet.data.pixels import decode_square
    from catnet.demo.synthetic import generate_dataset
    from catnet.training.loop import train

    base = tmp_path_factory.mktemp("shapes")
    kinds = ("cats", "cars", "birds", "houses")
    generate_dataset(base / "data", n_per_class=60, size=32, seed=0, classes=kinds)
    generate_dataset(base / "eval", n_per_class=30, size=32, seed=7, classes=kinds)
    cfg = tiny_config(base / "data", base / "run", base / "cache", width=16, depth=2,
                      image_size=32, epochs=15, batch_size=32, positive="cats")  # fmt: skip
    with single_thread():
        best = train(cfg).best_checkpoint
    model = load_model(best, "cpu")
    files = sorted((base / "eval").rglob("*.*"))
    pixels = torch.from_numpy(np.stack([decode_square(f, model.decode_size) for f in files]))
    return Explainer(model), pixels


@pytest.fixture(params=[8, 2], ids=["grad-cam", "grad-cam-x-layercam"])
def shapes_explainer(request, shapes_model) -> tuple[Explainer, torch.Tensor]:
    """The shapes model's explainer as catnet makes it (stride 8: its 8 x 8 last stage is fine
    enough, plain Grad-CAM) and sharpened by LayerCAM at stride 2 (16 x 16), the way a
    pretrained backbone's 7 x 7 stage is on real photos."""
    explainer, pixels = shapes_model
    explainer = Explainer(explainer.model, fine_stride=request.param)
    assert explainer.method == {8: "grad-cam", 2: "grad-cam x layercam"}[request.param]
    return explainer, pixels


@pytest.mark.slow
def test_deletion_hurts_more_than_random(shapes_explainer) -> None:
    explainer, pixels = shapes_explainer
    with single_thread():
        drops = deletion_drops(explainer, pixels, 0.2, torch.Generator().manual_seed(0))
        cat = torch.tensor([s == "cat" for s in explainer.explain(pixels).sides])
    heat, cells, noise = (drops[k] for k in ("heatmap", "random_cells", "random_pixels"))
    assert heat.mean() >= 1.5 * max(cells.mean(), noise.mean())  # measured 2.2x, 2.9x sharpened
    # Where the network said cat, greying the map's top 20 % takes the answer away (measured:
    # p(cat) down 0.86 on average, 0.82 sharpened); greying 20 % at random changes almost
    # nothing (< 0.05).
    assert cat.sum() >= 10
    assert heat[cat].mean() >= 0.4
    assert heat[cat].mean() >= max(cells[cat].mean(), noise[cat].mean()) + 0.3


@pytest.mark.slow
def test_randomised_weights_change_the_maps(shapes_explainer) -> None:
    explainer, pixels = shapes_explainer
    with single_thread():
        rho, empty = randomisation_correlation(explainer, pixels)
    # An empty random map correlates with nothing and would pass without testing anything.
    assert empty.float().mean() < 0.1
    assert rho[~empty].mean() < 0.3  # measured 0.17, 0.19 sharpened; the target is < 0.5


@pytest.mark.slow
def test_the_explained_side_matters(shapes_model) -> None:
    """The sign test on a trained model: for cat answers, the cat map's pixels carry the answer
    and the not-cat map's do not; for not_cat answers, the map is never empty and is not the
    cat map (the inverted-map pitfall)."""
    explainer, pixels = shapes_model
    with single_thread():
        explained = explainer.explain(pixels)
        cat = torch.tensor([s == "cat" for s in explained.sides])
        cat_maps = explainer.maps(pixels, torch.ones(len(pixels)))
        not_maps = explainer.maps(pixels, -torch.ones(len(pixels)))
        before = class_probability(explainer, pixels, cat)
        gen = torch.Generator().manual_seed(0)
        s = pixels.shape[1]

        def drop(maps: torch.Tensor) -> torch.Tensor:
            masked = grey_out(pixels, top_mask(upsample(maps, s), 0.2, gen))
            return before - class_probability(explainer, masked, cat)

        by_cat_map, by_not_map = drop(cat_maps), drop(not_maps)
    assert by_cat_map[cat].mean() >= by_not_map[cat].mean() + 0.4
    assert torch.equal(explained.maps[~cat], not_maps[~cat])  # "predicted" = the negative logit
    assert (not_maps[~cat].flatten(1).amax(1) == 1).all()  # never empty
    assert spearman(cat_maps[~cat], not_maps[~cat]).mean() < 0.3
