"""kNN probe speed: 30k embeddings x 768 dims, split 70/30 (probe's default), exact search.

Peers, in the same process on the same arrays:
- the bare similarity matrix product (the BLAS floor: exact kNN cannot beat it),
- scikit-learn's brute-force cosine KNeighborsClassifier (k=20, distance weights).

Prints seconds and ratios. Target: the whole probe (normalize, similarities,
top-k, weighted votes) under 2 s on the development CPU.

    python benchmarks/bench_knn.py [--n 30000] [--dim 768] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from spacenit.evaluation.knn import knn_scores


def clustered(n: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    return (centres[y] + 2.0 * rng.normal(size=(n, dim)).astype(np.float32)), y


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tick)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=30_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sklearn", action="store_true", help="also time scikit-learn (slow)")
    args = p.parse_args()
    x, y = clustered(args.n, args.dim, 10, seed=0)
    n_train = int(0.7 * args.n)
    x_train, y_train, x_test, y_test = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    flops = 2 * len(x_test) * n_train * args.dim
    print(f"{len(x_test)} queries x {n_train} references x {args.dim} dims = {flops / 1e9:.0f} GFLOP; torch threads: {torch.get_num_threads()}")

    knn_s = best_of(args.repeats, lambda: knn_scores(x_train, y_train, x_test, k=20, num_classes=10))
    a, b = torch.from_numpy(x_test), torch.from_numpy(x_train)
    matmul_s = best_of(args.repeats, lambda: a @ b.T)
    accuracy = (knn_scores(x_train, y_train, x_test, k=20, num_classes=10).argmax(1) == y_test).mean()
    print(f"spacenit kNN probe:   {knn_s:.2f} s ({flops / knn_s / 1e9:.0f} GFLOP/s), accuracy {accuracy:.3f}; target < 2 s: {'met' if knn_s < 2 else 'NOT met'}")
    print(f"bare similarity GEMM: {matmul_s:.2f} s ({flops / matmul_s / 1e9:.0f} GFLOP/s) -> kNN / GEMM = {knn_s / matmul_s:.2f}x")
    if args.sklearn:
        from sklearn.neighbors import KNeighborsClassifier

        clf = KNeighborsClassifier(n_neighbors=20, metric="cosine", algorithm="brute", weights="distance")
        sk_s = best_of(1, lambda: clf.fit(x_train, y_train).predict(x_test))
        print(f"scikit-learn brute:   {sk_s:.2f} s -> spacenit is {sk_s / knn_s:.1f}x faster")


if __name__ == "__main__":
    main()
