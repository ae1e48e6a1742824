"""Backbones: layouts, size arithmetic, key mapping, preprocessing, pretrained EfficientNet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from regattn_lib.extraction.methods import build_head
from regattn_lib.models import backbone_weights as BW
from regattn_lib.models import backbones as B
from regattn_lib.models import batchnorm_calibration as BN
from regattn_lib.models import caffe_weights as CW
from regattn_lib.models import conventions as C
from regattn_lib.models.factory import build_backbone
from regattn_lib.runtime.atomic import sha256_file

CAFFE_FILE = "imagenet-caffe-resnet101-features-10a101d.pth"
CAFFE_URL = (
    "http://cmp.felk.cvut.cz/cnnimageretrieval/data/networks/imagenet/"
    "imagenet-caffe-resnet101-features-10a101d.pth"
)
TV_FILE = "resnet101-63fe2227.pth"
TV_URL = "https://download.pytorch.org/models/resnet101-63fe2227.pth"


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def caffe_random() -> B.Backbone:
    return build_backbone("caffe-resnet101", pretrained=False)


@pytest.fixture(scope="module")
def tv_random() -> B.Backbone:
    return build_backbone("torchvision-resnet101", pretrained=False)


@pytest.fixture(scope="module")
def lite() -> B.Backbone:
    return build_backbone("efficientnet-lite0")


@pytest.fixture(scope="module")
def cirtorch_state(tmp_path_factory) -> tuple[dict[str, torch.Tensor], Path]:
    """A state dict in cirtorch's key format (``0.weight``, ``4.0.conv1.weight``...), random
    weights with BatchNorm statistics calibrated on photos under the caffe-bgr convention (so
    that the file's input convention can be read off it), saved to a file."""
    state = CW.random_caffe_state_dict("cirtorch", seed=0)
    path = tmp_path_factory.mktemp("weights") / CAFFE_FILE
    torch.save(state, path)
    return state, path


def _resize_short(image, short: int) -> torch.Tensor:
    """uint8 (H, W, 3) numpy -> uint8 (1, 3, h, w) tensor with its shorter side ``short``."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    h, w = x.shape[-2:]
    s = short / min(h, w)
    x = F.interpolate(
        x, size=(round(h * s), round(w * s)), mode="bilinear", antialias=True, align_corners=False
    )
    return x.round().clamp(0, 255).to(torch.uint8)


# ---------------------------------------------------------------------------- sizes and layout


def test_feature_map_size_hand_computed():
    # Caffe layout, H = 768, W = 1024:
    #   stem conv 7x7/2 pad 3:          floor((768 + 6 - 7)/2) + 1 = 384,  (1024...) -> 512
    #   max-pool 3/2 pad 0 ceil_mode:   ceil((384 - 3)/2) + 1     = 192,  ceil(509/2) + 1 = 256
    #   layer2-4, 1x1/2 pad 0 (x3):     192 -> 96 -> 48 -> 24,           256 -> 128 -> 64 -> 32
    assert B.feature_map_size("caffe-resnet101", 768, 1024) == (24, 32)
    # H = 700: 350 -> ceil(347/2)+1 = 175 -> 88 -> 44 -> 22;  W = 1000: 500 -> 250 -> 125 -> 63 -> 32
    assert B.feature_map_size("caffe-resnet101", 700, 1000) == (22, 32)
    # 33: 17 -> ceil(14/2)+1 = 8 -> 4 -> 2 -> 1, where torchvision's layout gives ceil(33/32) = 2:
    # 17 -> floor((17+2-3)/2)+1 = 9 -> 5 -> 3 -> 2.
    assert B.feature_map_size("caffe-resnet101", 33, 33) == (1, 1)
    assert B.feature_map_size("torchvision-resnet101", 33, 33) == (2, 2)
    assert B.feature_map_size("torchvision-resnet101", 700, 1000) == (22, 32)
    # EfficientNet with TF "SAME" padding: five stride-2 convs of ceil(x/2) = ceil(x/32).
    assert B.feature_map_size("efficientnet-lite0", 700, 1000) == (22, 32)
    assert B.feature_map_size("efficientnet-lite0", 33, 97) == (2, 4)
    with pytest.raises(ValueError, match="too small"):
        B.feature_map_size("caffe-resnet101", 2, 64)
    with pytest.raises(ValueError, match="unknown backbone"):
        B.feature_map_size("vgg16", 64, 64)


def test_caffe_layout_structure(caffe_random):
    net = caffe_random
    assert (net.conv1.kernel_size, net.conv1.stride, net.conv1.padding) == ((7, 7), (2, 2), (3, 3))
    assert isinstance(net.maxpool, nn.MaxPool2d)
    assert (net.maxpool.kernel_size, net.maxpool.stride) == (3, 2)
    assert net.maxpool.padding == 0 and net.maxpool.ceil_mode is True
    assert net.layer1[0].conv1.stride == (1, 1) and net.layer1[0].conv2.stride == (1, 1)
    for layer in (net.layer2, net.layer3, net.layer4):
        first = layer[0]
        assert first.conv1.kernel_size == (1, 1) and first.conv1.stride == (2, 2)
        assert first.conv2.kernel_size == (3, 3) and first.conv2.stride == (1, 1)
        assert first.downsample[0].kernel_size == (1, 1) and first.downsample[0].stride == (2, 2)
        assert all(b.conv1.stride == (1, 1) and b.conv2.stride == (1, 1) for b in layer[1:])
    assert [len(x) for x in (net.layer1, net.layer2, net.layer3, net.layer4)] == [3, 4, 23, 3]
    assert net.fc is None and not hasattr(net, "avgpool")
    assert (net.name, net.channels, net.stride, net.weights_id) == (
        "caffe-resnet101",
        2048,
        32,
        "random",
    )


def test_caffe_forward_paper_size(caffe_random):
    x = torch.zeros(1, 3, 768, 1024, dtype=torch.uint8)
    with torch.no_grad():
        y = caffe_random.features(x)
    assert tuple(y.shape) == (1, 2048, 24, 32)
    assert y.min() >= 0  # after ReLU


@pytest.mark.parametrize("size", [(33, 33), (98, 61), (97, 130), (65, 35), (161, 100)])
@pytest.mark.parametrize("name", B.BACKBONES)
def test_feature_map_size_matches_real_forward(name, size, caffe_random, tv_random, lite):
    model = {"caffe-resnet101": caffe_random, "torchvision-resnet101": tv_random}.get(name, lite)
    x = torch.randint(0, 256, (1, 3, *size), dtype=torch.uint8)
    with torch.no_grad():
        y = model.features(x)
    assert tuple(y.shape[-2:]) == B.feature_map_size(name, *size)
    assert y.shape[1] == model.channels


# ---------------------------------------------------------------------------- weights and keys


def test_map_cirtorch_keys_renames_prefixes():
    t = torch.zeros(1)
    mapped = CW.map_cirtorch_keys(
        {
            "0.weight": t,
            "1.running_mean": t,
            "4.0.downsample.0.weight": t,
            "5.3.bn2.bias": t,
            "6.22.conv2.weight": t,
            "7.2.bn3.running_var": t,
            "9.weight": t,
        }
    )
    assert list(mapped) == [
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.downsample.0.weight",
        "layer2.3.bn2.bias",
        "layer3.22.conv2.weight",
        "layer4.2.bn3.running_var",
        "9.weight",  # unknown prefixes stay, so that a strict load reports them
    ]


def test_cirtorch_keys_cover_caffe_layout_exactly(cirtorch_state):
    state, _ = cirtorch_state
    # the fixture has exactly the keys of cirtorch's nn.Sequential(*resnet101.children()[:-2])
    seq = nn.Sequential(*list(torchvision.models.resnet101().children())[:-2])
    assert set(state) == set(seq.state_dict())
    assert set(CW.map_cirtorch_keys(state)) == set(B.CaffeResNet101().state_dict())


def test_caffe_loads_cirtorch_file(cirtorch_state):
    state, path = cirtorch_state
    net = build_backbone("caffe-resnet101", weights_path=path)
    pairs = {
        "0.weight": net.conv1.weight,
        "1.weight": net.bn1.weight,
        "1.running_mean": net.bn1.running_mean,
        "4.0.downsample.1.bias": net.layer1[0].downsample[1].bias,
        "5.0.conv1.weight": net.layer2[0].conv1.weight,
        "6.22.conv2.weight": net.layer3[22].conv2.weight,
        "7.2.bn3.running_var": net.layer4[2].bn3.running_var,
    }
    for key, loaded in pairs.items():
        assert torch.equal(loaded, state[key]), key
    assert net.weights_id == sha256_file(path)
    assert not net.training and not any(p.requires_grad for p in net.parameters())


def test_truncated_weights_file_names_the_file(cirtorch_state, tmp_path):
    _, path = cirtorch_state
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(BW.WeightsError, match="truncated.pth"):
        build_backbone("caffe-resnet101", weights_path=bad)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(BW.WeightsError, match="garbage.pth"):
        build_backbone("caffe-resnet101", weights_path=garbage)


def test_missing_and_unexpected_keys_are_named(cirtorch_state):
    state, _ = cirtorch_state
    mapped = CW.map_cirtorch_keys(state)
    del mapped["layer3.22.conv2.weight"]
    with pytest.raises(BW.WeightsError, match=r"layer3\.22\.conv2\.weight") as err:
        BW.load_strict(B.CaffeResNet101(), mapped, "some/file.pth")
    assert "some/file.pth" in str(err.value)
    extra = CW.map_cirtorch_keys({**state, "8.weight": torch.zeros(3)})
    with pytest.raises(BW.WeightsError, match=r"unexpected keys \['8\.weight'\]"):
        BW.load_strict(B.CaffeResNet101(), extra, "x.pth")
    wrong_shape = CW.map_cirtorch_keys({**state, "0.weight": torch.zeros(64, 3, 3, 3)})
    with pytest.raises(BW.WeightsError, match="conv1.weight"):
        BW.load_strict(B.CaffeResNet101(), wrong_shape, "x.pth")


@pytest.mark.parametrize(
    "name, filename, url",
    [("caffe-resnet101", CAFFE_FILE, CAFFE_URL), ("torchvision-resnet101", TV_FILE, TV_URL)],
)
def test_missing_weights_error_gives_url_and_path(name, filename, url, tmp_path):
    dest = tmp_path / "weights" / filename
    with pytest.raises(BW.WeightsNotFoundError) as err:
        build_backbone(name, data_root=tmp_path, download=False)
    assert url in str(err.value) and str(dest) in str(err.value)
    assert isinstance(err.value, FileNotFoundError)


def _fake_downloads(monkeypatch, behaviour):
    """Replace ``downloads.download_entry`` by ``behaviour(url, dest)``, recording each call."""
    from regattn_lib.datasets import downloads, manifest

    calls = []

    def download_entry(key, data_root=None, **kwargs):
        entry = manifest.manifest_entry(key)
        dest = Path(data_root) / entry["dest"]
        calls.append((entry["url"], dest, key))
        return behaviour(entry["url"], dest)

    monkeypatch.setattr(downloads, "download_entry", download_entry)
    return calls


def test_failed_download_gives_url_and_path(monkeypatch, tmp_path):
    def fail(url, dest):
        raise OSError("network unreachable")

    _fake_downloads(monkeypatch, fail)
    dest = tmp_path / "weights" / CAFFE_FILE
    with pytest.raises(BW.WeightsNotFoundError) as err:
        build_backbone("caffe-resnet101", data_root=tmp_path)
    msg = str(err.value)
    assert CAFFE_URL in msg and str(dest) in msg and "network unreachable" in msg


def test_download_on_first_use_into_data_root(monkeypatch, tmp_path, cirtorch_state):
    _, source = cirtorch_state

    def copy(url, dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(source.read_bytes())
        return dest

    calls = _fake_downloads(monkeypatch, copy)
    net = build_backbone("caffe-resnet101", data_root=tmp_path)
    dest = tmp_path / "weights" / CAFFE_FILE
    assert calls == [(CAFFE_URL, dest, "caffe_resnet101_features")]
    assert net.weights_id == sha256_file(dest)
    build_backbone("caffe-resnet101", data_root=tmp_path)  # present now: no second download
    assert len(calls) == 1


def test_real_downloader_records_size_and_sha256_in_the_data_root(
    monkeypatch, tmp_path, cirtorch_state
):
    from regattn_lib.datasets import downloads, manifest

    _, source = cirtorch_state
    # A manifest override points the entry at a file:// URL standing in for the server; the
    # random file has no published hash, so its size and sha256 get recorded.
    override = tmp_path / "manifest.json"
    entry = dict(manifest.manifest_entry("caffe_resnet101_features"), url=source.as_uri())
    override.write_text(json.dumps({"files": {"caffe_resnet101_features": entry}}))
    monkeypatch.setenv("REGATTN_MANIFEST", str(override))
    monkeypatch.setenv("REGATTN_DATA", str(tmp_path / "elsewhere"))  # must not be used
    root = tmp_path / "data"
    net = build_backbone("caffe-resnet101", data_root=root)
    dest = root / "weights" / CAFFE_FILE
    record = downloads.lock_record(source.as_uri(), lock_file=root / "downloads.lock.json")
    assert record["size"] == source.stat().st_size
    assert record["sha256"] == sha256_file(source) == net.weights_id
    assert record["path"] == str(dest.resolve())
    assert not (tmp_path / "elsewhere").exists()
    assert torch.equal(net.conv1.weight, torch.load(dest, weights_only=True)["0.weight"])


def test_weights_locations_come_from_the_manifest(monkeypatch, tmp_path):
    from regattn_lib.datasets import manifest

    override = tmp_path / "manifest.json"
    entry = dict(manifest.manifest_entry("torchvision_resnet101"), dest="elsewhere/tv.pth")
    override.write_text(json.dumps({"files": {"torchvision_resnet101": entry}}))
    monkeypatch.setenv("REGATTN_MANIFEST", str(override))
    assert BW.default_weights_path("torchvision-resnet101", tmp_path) == (
        tmp_path.resolve() / "elsewhere" / "tv.pth"
    )
    assert not hasattr(B, "WeightsSource")  # no second registry of URLs and hashes


def test_torchvision_file_with_wrong_hash_is_rejected(tmp_path):
    dest = tmp_path / "weights" / TV_FILE
    dest.parent.mkdir()
    dest.write_bytes(b"something else")
    with pytest.raises(BW.WeightsError, match="63fe2227") as err:
        build_backbone("torchvision-resnet101", data_root=tmp_path, download=False)
    assert str(dest) in str(err.value)


# ---------------------------------------------------------------------------- preprocessing

# One 1x2 image: pixels RGB (10, 20, 30) and (255, 0, 127).
PIXELS = torch.tensor([[[[10, 255]], [[20, 0]], [[30, 127]]]], dtype=torch.uint8)


def test_preprocess_caffe_bgr_minus_mean(caffe_random):
    x = caffe_random.preprocess(PIXELS)
    # channel 0 is blue now: 30 - 103.939 and 127 - 103.939; channel 2 is red: 10 - 123.68...
    expected = torch.tensor(
        [[[[-73.939, 23.061]], [[-96.779, -116.779]], [[-113.68, 131.32]]]], dtype=torch.float32
    )
    assert x.dtype == torch.float32 and x.shape == (1, 3, 1, 2)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-4)


def test_preprocess_imagenet_mean_std(tv_random):
    x = tv_random.preprocess(PIXELS)
    assert x[0, 0, 0, 0].item() == pytest.approx((10 / 255 - 0.485) / 0.229, abs=1e-5)
    assert x[0, 1, 0, 1].item() == pytest.approx((0 - 0.456) / 0.224, abs=1e-5)
    assert x[0, 2, 0, 1].item() == pytest.approx((127 / 255 - 0.406) / 0.225, abs=1e-5)
    assert x[0, 0, 0, 1].item() == pytest.approx((1 - 0.485) / 0.229, abs=1e-5)


def test_preprocess_lite(lite):
    x = lite.preprocess(PIXELS)
    expected = torch.tensor(
        [[[[-0.9140625, 1.0]], [[-0.8359375, -0.9921875]], [[-0.7578125, 0.0]]]]
    )
    torch.testing.assert_close(x, expected, rtol=0, atol=0)


def test_preprocess_rejects_non_uint8():
    with pytest.raises(ValueError, match="uint8"):
        C.preprocess_lite(PIXELS.float())
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        C.preprocess_caffe(PIXELS[0])


# ---------------------------------------------------------------------------- EfficientNet-Lite0


def test_lite_builds_silently_from_packaged_weights(capsys):
    net = build_backbone("efficientnet-lite0")
    assert capsys.readouterr().out == ""
    assert net.weights_id == sha256_file(B.lite0_weights_path())
    assert isinstance(net.fc, nn.Linear)
    assert (net.fc.in_features, net.fc.out_features, net.channels) == (1280, 1000, 1280)


def test_lite_matches_package_below_six(lite):
    # At 224 x 224 the package's static padding equals TF "SAME"; the only difference left is
    # the head's ReLU6, so clamping our map at 6 must give the package's extract_features.
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(torch.load(B.lite0_weights_path(), weights_only=True))
    ref.eval()
    x = torch.randint(0, 256, (1, 3, 224, 224), dtype=torch.uint8)
    with torch.no_grad():
        ours = lite.features(x)
        theirs = ref.extract_features(lite.preprocess(x))
    torch.testing.assert_close(ours.clamp(max=6), theirs, rtol=1e-5, atol=1e-5)


def test_lite_features_on_a_photo_are_relu_not_relu6(lite):
    from skimage import data

    x = _resize_short(data.astronaut(), 256)
    with torch.no_grad():
        f = lite.features(x)
    assert tuple(f.shape) == (1, 1280, 8, 8)
    assert f.min() >= 0
    assert f.max() > 6  # ReLU6 would have clipped it (measured: max 17.7)
    clipped = (f.amax(dim=(2, 3)) > 6).float().mean().item()
    assert 0.02 < clipped < 0.5  # measured 9.2% of channel maxima above 6


@pytest.mark.parametrize(
    "photo, classes",
    [
        ("chelsea", range(281, 286)),  # tabby, tiger cat, Persian, Siamese, Egyptian cat
        ("coffee", (967, 968)),  # espresso, cup
        ("astronaut", (518, 560)),  # crash helmet, football helmet
    ],
)
def test_lite_fc_classifies_photos(lite, photo, classes):
    from skimage import data

    x = _resize_short(getattr(data, photo)(), 256)
    with torch.no_grad():
        logits = lite.fc(lite.features(x).mean(dim=(2, 3)))
    top5 = logits[0].topk(5).indices.tolist()
    assert set(top5) & set(classes), top5
    if photo != "astronaut":  # no astronaut class in ImageNet; the others are top-1
        assert top5[0] in classes, top5


def test_lite_channels_last_gives_same_features(lite):
    x = torch.randint(0, 256, (2, 3, 70, 90), dtype=torch.uint8)
    with torch.no_grad():
        ref = lite.features(x)
        out = lite.features(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lite_on_cuda_matches_cpu():
    net = build_backbone("efficientnet-lite0")
    x = torch.randint(0, 256, (1, 3, 96, 128), dtype=torch.uint8)
    with torch.no_grad():
        cpu = net.features(x)
        gpu = net.to("cuda").features(x)  # features() moves the images itself
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------------------- frozen, eval


def test_train_keeps_backbones_in_eval(caffe_random, tv_random, lite):
    for net in (caffe_random, tv_random, lite):
        wrapper = nn.Sequential(net, nn.Linear(2, 2))
        wrapper.train()
        assert wrapper[1].training
        assert not any(m.training for m in net.modules())
        bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        assert bns and not any(bn.training for bn in bns)
        assert not any(p.requires_grad for p in net.parameters())


def test_fc_where_the_weights_have_one(caffe_random, tv_random):
    assert caffe_random.fc is None
    assert (tv_random.fc.in_features, tv_random.fc.out_features) == (2048, 1000)
    assert tv_random.fc.weight.requires_grad is False


def test_unknown_backbone_name():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("resnet50", pretrained=False)


# ---------------------------------------------------------------------------- calibration
def test_calibrated_random_backbone_keeps_fp16_range():
    torch.manual_seed(0)
    bb = build_backbone("caffe-resnet101", pretrained=False)
    images = torch.randint(0, 256, (2, 3, 128, 160), dtype=torch.uint8)
    with torch.no_grad():
        before = float(bb.features(images).abs().max())
    assert before > 65504  # the default statistics would overflow fp16
    BN.calibrate_batchnorm(bb, images)

    # every BatchNorm now normalises its own input on these images: mean 0, variance 1
    outputs: list[torch.Tensor] = []
    norms = [m for m in bb.modules() if isinstance(m, nn.BatchNorm2d)]
    # clone: the ReLU after each BatchNorm works in place
    hooks = [m.register_forward_hook(lambda m, a, out: outputs.append(out.clone())) for m in norms]
    with torch.no_grad():
        after = float(bb.features(images).abs().max())
    for h in hooks:
        h.remove()
    assert len(outputs) == len(norms) == 104
    for out in outputs:
        torch.testing.assert_close(
            out.mean((0, 2, 3)), torch.zeros(out.shape[1]), atol=1e-3, rtol=0
        )
        var = out.var((0, 2, 3), unbiased=False)
        # unit variance, except below the floor (a near-dead channel is not blown up)
        assert float(var.max()) < 1.01 and abs(float(var.median()) - 1) < 1e-2
    assert after < 1000  # far inside fp16's range
    assert not bb.training


def test_calibrate_needs_batchnorm():
    class NoNorm(nn.Module):
        name = "nonorm"

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def features(self, images):
            return self.conv(images.float())

    with pytest.raises(ValueError, match="nonorm has no BatchNorm"):
        BN.calibrate_batchnorm(NoNorm(), torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


# ---------------------------------------------------------------------------- input convention


def _other_photos(side: int = 112) -> torch.Tensor:
    """Photos the convention is not detected on (detection uses astronaut, coffee, chelsea,
    rocket), as uint8 (N, 3, side, side)."""
    from skimage import data

    photos = [data.stereo_motorcycle()[0], data.immunohistochemistry(), data.coffee()[::-1]]
    out = []
    for im in photos:
        x = _resize_short(im.copy(), side)
        h, w = x.shape[-2:]
        out.append(x[..., (h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 :][..., :side])
    return torch.cat(out)


def _rmac(net: B.Backbone, images: torch.Tensor) -> torch.Tensor:

    with torch.no_grad():
        return build_head("rmac", levels=2)(net.features(images), images)


@pytest.fixture(scope="module")
def folded_file(cirtorch_state, tmp_path_factory) -> Path:
    state, _ = cirtorch_state
    path = tmp_path_factory.mktemp("folded") / "folded-rgb.pth"
    torch.save(C.fold_caffe_to_rgb(state), path)
    return path


def test_fold_is_exact_away_from_the_border():
    # conv1 + bn1 of a Caffe file on Caffe input == folded conv1 + bn1 on ImageNet input,
    # wherever the 7x7 window does not reach the zero padding.
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 5, 7, stride=2, padding=3, bias=False)
    state = {
        "0.weight": conv.weight.detach().clone(),
        "1.running_mean": torch.randn(5) * 10,
        "1.running_var": torch.rand(5) * 100 + 1,
        "1.weight": torch.ones(5),
        "1.bias": torch.zeros(5),
        "4.0.conv1.weight": torch.ones(1),
    }
    before = {k: v.clone() for k, v in state.items()}
    folded = C.fold_caffe_to_rgb(state)
    for k in state:  # pure: the input is untouched; only conv1 and bn1's mean change
        assert torch.equal(state[k], before[k]), k
        changed = k in ("0.weight", "1.running_mean")
        assert torch.equal(folded[k], state[k]) != changed, k
    # channel reversal and 255 * std, hand-checked on one weight: RGB input channel 0 (red)
    # takes the Caffe filter of BGR channel 2 times 255 * 0.229
    assert folded["0.weight"][3, 0, 2, 4].item() == pytest.approx(
        state["0.weight"][3, 2, 2, 4].item() * 255 * 0.229, rel=1e-6
    )
    images = torch.randint(0, 256, (2, 3, 40, 52), dtype=torch.uint8)
    conv_f = nn.Conv2d(3, 5, 7, stride=2, padding=3, bias=False)
    with torch.no_grad():
        conv_f.weight.copy_(folded["0.weight"])
        caffe = conv(C.preprocess_caffe(images)) - state["1.running_mean"].view(1, 5, 1, 1)
        rgb = conv_f(C.preprocess_imagenet(images)) - folded["1.running_mean"].view(1, 5, 1, 1)
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    torch.testing.assert_close(rgb[inner], caffe[inner], rtol=1e-4, atol=1e-3)
    # named layout (the authors' keys) folds the same way
    named = C.fold_caffe_to_rgb(
        {"conv1.weight": state["0.weight"], "bn1.running_mean": state["1.running_mean"]}
    )
    assert torch.equal(named["conv1.weight"], folded["0.weight"])
    assert torch.equal(named["bn1.running_mean"], folded["1.running_mean"])


def test_convention_read_off_the_file_and_fold_gives_same_descriptors(cirtorch_state, folded_file):
    _, path = cirtorch_state
    caffe = build_backbone("caffe-resnet101", weights_path=path)
    rgb = build_backbone("caffe-resnet101", weights_path=folded_file)
    assert (caffe.input_convention, caffe.convention_source) == ("caffe-bgr", "detected")
    assert (rgb.input_convention, rgb.convention_source) == ("rgb-imagenet", "detected")
    # measured: the right convention scores about 0.2, the wrong one above 8
    assert caffe.convention_scores["caffe-bgr"] < 1 < 8 < caffe.convention_scores["rgb-imagenet"]
    assert rgb.convention_scores["rgb-imagenet"] < 1 < 8 < rgb.convention_scores["caffe-bgr"]
    assert caffe.cache_id == f"{sha256_file(path)}|caffe-bgr"
    assert rgb.cache_id == f"{sha256_file(folded_file)}|rgb-imagenet"
    assert rgb.input_metadata()["input_convention"] == "rgb-imagenet"
    images = _other_photos()
    a, b = _rmac(caffe, images), _rmac(rgb, images)
    cos = (a * b).sum(1)  # R-MAC descriptors are L2-normalised
    assert cos.min() >= 0.99, cos
    # what the pipeline did before: the cirtorch file fed BGR 0-255 minus the Caffe mean
    wrong = build_backbone(
        "caffe-resnet101", weights_path=folded_file, input_convention="caffe-bgr"
    )
    assert wrong.convention_source == "forced" and wrong.convention_scores is None
    assert (a * _rmac(wrong, images)).sum(1).min() < 0.9


def test_file_matching_no_convention_is_refused(cirtorch_state, tmp_path):
    state, _ = cirtorch_state
    bad = dict(state)
    bad["1.running_var"] = state["1.running_var"] * 100  # bn1 statistics of neither convention
    bad["1.running_mean"] = state["1.running_mean"] * 10
    path = tmp_path / "odd-stats.pth"
    torch.save(bad, path)
    with pytest.raises(CW.InputConventionError, match="odd-stats.pth") as err:
        build_backbone("caffe-resnet101", weights_path=path)
    assert isinstance(err.value, BW.WeightsError)
    assert "caffe-bgr" in str(err.value) and "input_convention=" in str(err.value)
    forced = build_backbone("caffe-resnet101", weights_path=path, input_convention="caffe-bgr")
    assert (forced.input_convention, forced.convention_source) == ("caffe-bgr", "forced")
    with pytest.raises(ValueError, match="input_convention"):
        build_backbone("caffe-resnet101", weights_path=path, input_convention="bgr")
    with pytest.raises(ValueError, match="input_convention"):
        build_backbone("efficientnet-lite0", input_convention="caffe-bgr")


def test_detection_on_real_pretrained_weights(lite):
    # The method on a trained network: EfficientNet-Lite0's stem conv + BatchNorm pick its own
    # (x - 127) / 128 over the Caffe convention (measured scores 0.8 and 37).
    from regattn_lib.models import conventions as C

    scores = C.convention_scores(lite.stem[0], lite.stem[1], ("rgb-lite", "caffe-bgr"))
    assert scores["rgb-lite"] < 1.0 and scores["caffe-bgr"] > 20
    assert C.choose_convention(scores) == "rgb-lite"
    assert (lite.input_convention, lite.convention_source) == ("rgb-lite", "fixed")


def test_authors_file_with_fc_loads(cirtorch_state, tmp_path):
    # resnet101_caffeProto.pth: named keys (conv1.weight, layer1.0...) as the authors'
    # Resnet.py, no num_batches_tracked (PyTorch 0.3), plus the ImageNet fc.weight / fc.bias.
    state, _ = cirtorch_state
    named = CW.caffe_keys(CW.map_cirtorch_keys(state), "authors")
    assert "conv1.weight" in named and not any("num_batches" in k for k in named)
    torch.manual_seed(3)
    fc_w, fc_b = torch.randn(1000, 2048) * 0.01, torch.randn(1000)
    path = tmp_path / "resnet101_caffeProto.pth"
    torch.save({**named, "fc.weight": fc_w, "fc.bias": fc_b}, path)
    net = build_backbone("caffe-resnet101", weights_path=path)
    assert (net.input_convention, net.convention_source) == ("caffe-bgr", "detected")
    assert isinstance(net.fc, nn.Linear) and (net.fc.in_features, net.fc.out_features) == (
        2048,
        1000,
    )
    assert torch.equal(net.fc.weight, fc_w) and torch.equal(net.fc.bias, fc_b)
    assert not net.fc.weight.requires_grad and not net.fc.training
    assert torch.equal(net.layer3[22].conv2.weight, state["6.22.conv2.weight"])
    torch.save({**named, "fc.weight": fc_w}, path)
    with pytest.raises(BW.WeightsError, match="fc.weight but not its pair"):
        build_backbone("caffe-resnet101", weights_path=path)
    torch.save({**named, "fc.weight": fc_w[:10], "fc.bias": fc_b[:10]}, path)
    with pytest.raises(BW.WeightsError, match="resnet101_caffeProto.pth"):
        build_backbone("caffe-resnet101", weights_path=path)
    torch.save({**named, "fc.weight": fc_w, "fc.bias": fc_b, "extra.weight": fc_b}, path)
    with pytest.raises(BW.WeightsError, match=r"unexpected keys \['extra\.weight'\]"):
        build_backbone("caffe-resnet101", weights_path=path)


def test_preprocess_follows_the_convention():
    net = build_backbone("caffe-resnet101", pretrained=False, input_convention="rgb-imagenet")
    torch.testing.assert_close(net.preprocess(PIXELS), C.preprocess_imagenet(PIXELS))
    assert net.input_convention == "rgb-imagenet"
