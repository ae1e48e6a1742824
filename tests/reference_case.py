"""The fixed case that pins the paper's descriptor: inputs defined by formulas (no random
generator, so they are the same on every machine and torch version), the authors' released
attention weights, and the expected output computed by the independent usual pipeline
(``benchmarks/usual_pipeline.py``).

Regenerate the stored expectation (only when the method itself changes, with a reason in the
commit) with::

    .venv/bin/python tests/reference_case.py ../shared/official/ContextAwareRegionalAttention_weights.pth
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
EXPECTED = Path(__file__).resolve().parent / "data" / "reference_descriptor.json"
#: Input size the feature map stands for (stride 32: a 12 x 16 map) and the paper's L.
HEIGHT, WIDTH, CHANNELS, LEVELS = 384, 512, 2048, 5
#: Descriptor dimensions stored (every 16th): small file, every part of the vector covered.
SAMPLED = slice(0, CHANNELS, 16)


def usual_pipeline():
    """``benchmarks/usual_pipeline.py`` as a module (benchmarks/ is not a package)."""
    name = "usual_pipeline"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def fixed_feature_map() -> torch.Tensor:
    """(1, 2048, 12, 16) non-negative map with structure in every channel and some zeros."""
    c = np.arange(CHANNELS, dtype=np.float64)[:, None, None]
    y = np.arange(HEIGHT // 32, dtype=np.float64)[None, :, None]
    x = np.arange(WIDTH // 32, dtype=np.float64)[None, None, :]
    f = np.sin(0.731 * c + 0.37 * y * (1 + c % 7)) + np.cos(0.219 * c - 0.53 * x * (1 + c % 5))
    f = np.maximum(f + 0.2 * np.cos(0.05 * c), 0.0) * (1.0 + (c % 3))
    return torch.from_numpy(f.astype(np.float32))[None]


def fixed_whitening() -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (2048,), projection (2048, 2048)): a scaled Householder reflection, exactly
    orthogonal up to the per-row scales, defined without any random generator."""
    c = np.arange(CHANNELS, dtype=np.float64)
    mean = 0.4 + 0.3 * np.sin(0.013 * c)
    v = np.cos(0.071 * c) + 0.1
    householder = np.eye(CHANNELS) - 2.0 * np.outer(v, v) / (v @ v)
    scales = 1.0 / np.sqrt(1.0 + c / 256.0)
    projection = scales[:, None] * householder
    return torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(
        projection.astype(np.float32)
    )


def compute_expected(weights: Path) -> dict:
    """The expected output, from the usual pipeline alone."""
    up = usual_pipeline()
    state = torch.load(weights, map_location="cpu", weights_only=True)
    regions = up.authors_rmac_regions(HEIGHT, WIDTH, LEVELS)
    mean, projection = fixed_whitening()
    methods = {
        "rmac": None,
        "context": {"state": state, "context": True, "activation": "tanh"},
    }
    out = up.describe_feature_map(fixed_feature_map()[0], regions, methods, mean, projection)
    return {
        "regions": regions.tolist(),
        "alpha_context": [round(float(a), 7) for a in out["context"][0]],
        "descriptor_stride": SAMPLED.step,
        "descriptor_rmac": [round(float(v), 8) for v in out["rmac"][1][SAMPLED]],
        "descriptor_context": [round(float(v), 8) for v in out["context"][1][SAMPLED]],
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    expected = compute_expected(Path(argv[0]))
    lines = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in expected.items()]
    EXPECTED.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    print(f"wrote {EXPECTED} ({len(expected['regions'])} regions)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
