"""The paper profile's descriptor path end to end, offline: Caffe ResNet-101 + the authors'
context-aware attention + whitening, on a few local images. A randomly initialised state dict
with cirtorch's keys (BatchNorm calibrated) stands in for the downloaded features file, placed
where a user would put it; the attention file is the authors' real release (shared/official)."""

import numpy as np
import torch
from PIL import Image

from regattn_lib.core.whitening import learn_pca_whitening
from regattn_lib.extraction.extract import extract_images
from regattn_lib.extraction.methods import build_head, method_of, whitening_head
from regattn_lib.models.attention_weights import load_official_attention
from regattn_lib.models.backbone_weights import default_weights_path
from regattn_lib.models.caffe_weights import random_caffe_state_dict
from regattn_lib.models.factory import build_backbone


def test_caffe_backbone_official_attention_descriptor_end_to_end(tmp_path, official_weights):
    # random weights, BatchNorm calibrated on photos so that the input convention is readable
    state = random_caffe_state_dict("cirtorch", seed=0)
    dest = default_weights_path("caffe-resnet101", tmp_path)
    dest.parent.mkdir(parents=True)
    torch.save(state, dest)
    backbone = build_backbone("caffe-resnet101", data_root=tmp_path, download=False)
    assert backbone.channels == 2048 and backbone.fc is None
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(150, 200), (200, 150), (150, 200)]):
        p = tmp_path / f"local{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    # whitening from these images' regional vectors (few, so few dimensions)
    vecs = extract_images(
        paths, backbone, {"v": whitening_head("regional", levels=2)}, None, progress=False
    )["v"]
    whitening = learn_pca_whitening(torch.cat(vecs), n_components=8)
    attention = load_official_attention(official_weights)
    heads = {
        "rmac": build_head("rmac", levels=3, whitening=whitening),
        "ours": build_head(
            method_of(attention), levels=3, attention=attention, whitening=whitening
        ),
    }
    out = extract_images(
        paths,
        backbone,
        heads,
        image_size=224,
        bbxs=[None, [10, 10, 140, 190], None],
        progress=False,
    )
    for name in heads:
        d = torch.stack(out[name])
        assert d.shape == (3, 8) and torch.isfinite(d).all()
        torch.testing.assert_close(d.norm(dim=1), torch.ones(3))
    assert not torch.allclose(torch.stack(out["rmac"]), torch.stack(out["ours"]))
