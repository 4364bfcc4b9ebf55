"""Evaluation at scale: xmcore's streaming exact ranking against the full score matrix.

Each measurement runs in a fresh subprocess so that its peak memory (ru_maxrss) is its own.
The baseline is the common approach (CLIP_benchmark, LAVIS): build the whole queries x gallery
score matrix and a positives matrix, then take top-k; it yields R@K only, while xmcore's
evaluator yields every relevant item's exact rank (R@K, mAP, NDCG, ...).

    python bench/eval_scale.py                      # 20k x 20k side by side, then 100k x 100k streaming
    python bench/eval_scale.py --side-by-side 5000 --large 0
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def make(n: int, d: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, d, generator=g)
    texts = images + 2.5 * torch.randn(n, d, generator=g)  # one caption per image, noisy
    return images, texts


def run_streaming(n: int, d: int) -> dict:
    import numpy as np

    from xmcore.data import Split
    from xmcore.evaluation import normalize_, rank_directions

    images, texts = (normalize_(e) for e in make(n, d))  # as `xmcore evaluate --embeddings` loads them
    split = Split(("image", "text"), {"image": range(n), "text": range(n)}, np.arange(n))
    start = time.perf_counter()
    rankings = rank_directions({"image": images, "text": texts}, split)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "R@1": float(np.mean(rankings["i2t"].ranks <= 1)),
            "R@10": float(np.mean(rankings["i2t"].ranks <= 10))}


def run_full_matrix(n: int, d: int) -> dict:
    import torch

    images, texts = make(n, d)
    start = time.perf_counter()
    img = torch.nn.functional.normalize(images, dim=-1)
    txt = torch.nn.functional.normalize(texts, dim=-1)
    scores = txt @ img.T  # n x n
    positives = torch.eye(n, dtype=torch.bool)  # the positives matrix these tools build
    for s, p in ((scores, positives), (scores.T, positives.T)):  # text->image, then image->text
        hits = p.gather(1, s.topk(10, dim=1).indices)
        r1, r10 = hits[:, :1].any(1).float().mean().item(), hits.any(1).float().mean().item()
    return {"seconds": time.perf_counter() - start, "R@1": r1, "R@10": r10}  # of the last direction (i2t)


def child(kind: str, n: int, d: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--n", str(n), "--d", str(d)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side-by-side", type=int, default=20000, help="size n for both approaches (n x n)")
    parser.add_argument("--large", type=int, default=100000, help="size n for streaming alone (0: skip)")
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--child", choices=["streaming", "full"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = (run_streaming if args.child == "streaming" else run_full_matrix)(args.n, args.d)
        result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return

    n = args.side_by_side
    full = child("full", n, args.d)
    stream = child("streaming", n, args.d)
    print(f"{n} texts x {n} images, d={args.d}")
    print(f"  full matrix : {full['seconds']:7.1f} s  peak {full['peak_mb']:7.0f} MB  R@1 {full['R@1']:.4f}  R@10 {full['R@10']:.4f}")
    print(f"  streaming   : {stream['seconds']:7.1f} s  peak {stream['peak_mb']:7.0f} MB  R@1 {stream['R@1']:.4f}  R@10 {stream['R@10']:.4f}")
    print(f"  ratio streaming/full: time {stream['seconds'] / full['seconds']:.2f}x, peak memory {stream['peak_mb'] / full['peak_mb']:.2f}x")
    if args.large:
        big = child("streaming", args.large, args.d)
        print(f"{args.large} texts x {args.large} images, d={args.d}, streaming (both directions, every relevant rank):")
        print(f"  {big['seconds']:.1f} s, peak {big['peak_mb']:.0f} MB (target <= 1536 MB)")


if __name__ == "__main__":
    main()
