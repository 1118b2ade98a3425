"""Does the best learning rate move with the width? nano and a 2x-wide nano, with and without muP, one token budget.

    OMP_NUM_THREADS=1 python benchmarks/lr_sweep_mup.py --steps 120 --work-dir eval-work/lr-sweep

(One thread: on a shared 2-core machine torch's own threads oversubscribed it, 3-10 s a
nano step against 0.6 s with one thread.)

Pixel reconstruction (`objective.name=autoencoder`: a loss a collapsed encoder
cannot lower) on the real EuroSAT chips (../shared/data/eurosat_ms, converted
once into --work-dir), all 13 bands in one token per 8 px patch, batch 16,
AdamW with a 10% warm-up then cosine: the same steps, samples and tokens at
both widths. Widths: nano (dim 128, 8 heads, predictor 128) and twice it (dim
256, 8 heads of 32, predictor 256). muP's base width is nano's, so nano's runs
are the same with and without it (spacenit.train.mup: exactly SP at m = 1) and
run once. A run's score is its mean reconstruction loss over the last 20% of
its steps (the trainer logs interval means every 10 steps); a curve's point is
the mean over --seeds (which also draw the initial weights). Prints the table
and the best rate of each curve and seed, and writes the runs to
--work-dir/lr_sweep.json (a re-run skips the runs it holds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from spacenit.data.stats import compute_stats
from spacenit.evaluation.datasets import eurosat_task
from spacenit.train.pretrain import build_config, pretrain

#: Learning rates, a factor 2 apart: SP's optimum for Adam moves as 1/width, so doubling
#: the width should move it one grid point down without muP and not at all with it.
LRS = (2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3, 8e-3)
#: (curve, width, muP)
CURVES = (("nano", 128, False), ("2x nano, SP", 256, False), ("2x nano, muP", 256, True))
RECIPE = ["objective.name=autoencoder", "model.tokenization.preset=single_bandset", "data.min_patch_size=8",
          "data.max_patch_size=8", "data.num_workers=0", "train.checkpoint_every=1000000", "tracking.log_system_metrics=false",
          "tracking.log_checkpoints=false", "model.mup_base_dim=128"]  # fmt: skip


def score(out: Path, steps: int) -> float:
    """Mean reconstruction loss of the logged intervals in the last 20% of the run."""
    lines = [json.loads(x) for x in (out / "mlflow_metrics.jsonl").read_text().splitlines()]
    tail = [x["metrics"]["train/reconstruction_loss"] for x in lines if x["step"] > 0.8 * steps]
    return sum(tail) / len(tail)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    p.add_argument("--work-dir", type=Path, default=Path("eval-work/lr-sweep"))
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--lrs", type=float, nargs="+", default=list(LRS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = p.parse_args()
    work = args.work_dir.resolve()
    task = eurosat_task(args.data_root, work)
    if not (task.dataset_dir / "stats.json").is_file():
        compute_stats(task.dataset_dir, progress=False)
    results_path = work / "lr_sweep.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}  # resumable
    for seed in args.seeds:
        for curve, width, mup in CURVES:
            for lr in args.lrs:
                key = f"{curve} | lr {lr:g} | {args.steps} steps | seed {seed}"
                if key in results:
                    continue
                out = work / f"{width}-{'mup' if mup else 'sp'}-{lr:g}-{args.steps}-seed{seed}"
                cfg = build_config("spacenit_nano", [*RECIPE, f"model.dim={width}", f"model.decoder_dim={width}",
                                                     f"model.mup={str(mup).lower()}", f"train.lr={lr}", f"train.steps={args.steps}",
                                                     f"train.warmup_steps={max(1, args.steps // 10)}", f"train.seed={seed}"],
                                   preset="small")  # fmt: skip
                tick = time.perf_counter()
                pretrain(task.dataset_dir, task.dataset_dir / "stats.json", out, cfg,
                         tracking_uri=f"sqlite:///{work / 'mlflow.db'}", experiment="lr-sweep", register_as=None)  # fmt: skip
                results[key] = {"curve": curve, "lr": lr, "steps": args.steps, "seed": seed, "loss": score(out, args.steps),
                                "minutes": (time.perf_counter() - tick) / 60}  # fmt: skip
                print(f"{key}: loss {results[key]['loss']:.4f} ({results[key]['minutes']:.1f} min)", flush=True)
                results_path.write_text(json.dumps(results, indent=1))
    runs = [r for r in results.values() if r["steps"] == args.steps and r["seed"] in args.seeds and r["lr"] in args.lrs]
    mean = {(c, lr): statistics.mean(r["loss"] for r in runs if (r["curve"], r["lr"]) == (c, lr))
            for c, _, _ in CURVES for lr in args.lrs if any((r["curve"], r["lr"]) == (c, lr) for r in runs)}  # fmt: skip
    print(f"\nmean loss over seeds {args.seeds}\n{'lr':>8} " + " ".join(f"{c:>14}" for c, _, _ in CURVES))
    for lr in args.lrs:
        print(f"{lr:8g} " + " ".join(f"{mean[(c, lr)]:14.4f}" if (c, lr) in mean else f"{'-':>14}" for c, _, _ in CURVES))
    for curve, _, _ in CURVES:
        points = {lr: v for (c, lr), v in mean.items() if c == curve}
        per_seed = [min((r for r in runs if r["curve"] == curve and r["seed"] == s), key=lambda r: r["loss"])["lr"]
                    for s in args.seeds if any(r["curve"] == curve and r["seed"] == s for r in runs)]  # fmt: skip
        if points:
            best = min(points, key=points.get)
            print(f"best lr, {curve}: {best:g} (mean loss {points[best]:.4f}); per seed: {per_seed}")


if __name__ == "__main__":
    main()
