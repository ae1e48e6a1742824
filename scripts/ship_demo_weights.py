"""Copy the demo profile's learned attention and whitening into the package, so that a clean
clone searches photos (``python -m regattn_lib search``) without training first.

    .venv/bin/python scripts/ship_demo_weights.py [--results results] [--data data]

Writes ``regattn_lib/assets/demo/``: ``attention_regional.pt`` and ``attention_context.pt``
(the first seed's models of notebook 02, the paper's recipe), ``attention_metric-regional.pt``
and ``attention_metric-context.pt`` (the same, learned by metric learning: beyond the paper) and ``whitening.pt`` (the demo's PCA-whitening with its
projection stored in fp16, to stay under 5 MB; used in fp32), and ``SOURCE.md`` saying how they
were made (profile, seed, commit, and the fp16 storage's effect on descriptors, measured here).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from datetime import UTC, datetime

import torch

from regattn_lib.apps.photos.model import SHIPPED_DIR
from regattn_lib.core.whitening import PCAWhitening
from regattn_lib.experiments import pipeline as P
from regattn_lib.runtime.paths import results_root

MAX_BYTES = 5 * 2**20


def fp16_effect(w: PCAWhitening, half: PCAWhitening, n: int = 2000) -> float:
    """Largest cosine distance between whitened random regional vectors under the fp32 and the
    fp16-stored projection (vectors drawn around the whitening's own mean)."""
    g = torch.Generator().manual_seed(0)
    x = w.mean + torch.rand(n, w.in_dim, generator=g) * w.mean.abs().mean() * 4
    a, b = w.apply(x), half.apply(x)
    return float((1 - torch.nn.functional.cosine_similarity(a, b, dim=1)).max())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=None, help="results root (default: results/)")
    ap.add_argument("--data", default=None, help="data root holding the whitening cache")
    args = ap.parse_args(argv)
    results = None if args.results is None else results_root("demo", args.results)
    ctx = P.setup("demo", data_root=args.data, results=results, device="cpu")
    dest = SHIPPED_DIR / "demo"
    dest.mkdir(parents=True, exist_ok=True)
    lines = []
    for kind in (*P.PAPER_KINDS.values(), *P.METRIC_KINDS.values()):
        src = P.attention_file(ctx, kind)
        shutil.copyfile(src, dest / src.name)
        lines.append(
            f"- `{src.name}`: notebook 02's {kind} attention, seed {ctx.profile.train.seeds[0]}"
        )
    w = P.learn_whitening(ctx, progress=False, cached_only=True)
    stored = PCAWhitening(w.mean, w.projection.half(), w.eigenvalues, dict(w.meta))
    stored.save(dest / "whitening.pt")
    distance = fp16_effect(w, PCAWhitening.load(dest / "whitening.pt"))
    lines.append(
        f"- `whitening.pt`: the demo's PCA-whitening ({w.in_dim} -> {w.out_dim}, "
        f"{w.meta.get('n_vectors', '?')} regional vectors of the whitening split), projection "
        f"stored in fp16; largest cosine distance it causes on whitened vectors: {distance:.1e}"
    )
    for f in dest.glob("*.pt"):
        if f.stat().st_size > MAX_BYTES:
            raise SystemExit(f"{f} is {f.stat().st_size} bytes, over the 5 MB limit")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    (dest / "SOURCE.md").write_text(
        "# Shipped demo weights\n\n"
        f"Made by `scripts/ship_demo_weights.py` on {datetime.now(UTC):%Y-%m-%d} at commit "
        f"{commit or 'unknown'} from `./run_all.sh --profile demo` (EfficientNet-Lite0, "
        f"{ctx.profile.image_size} px, L = {ctx.profile.levels}; synthetic classification and "
        "whitening splits, see docs/running.md):\n\n" + "\n".join(lines) + "\n"
    )
    print((dest / "SOURCE.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
