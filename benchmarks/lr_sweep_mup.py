"""Does the best learning rate move with the width? nano and a 2x-wide nano, with and without muP, one token budget.

    python benchmarks/lr_sweep_mup.py --steps 150 --work-dir eval-work/lr-sweep

Pixel reconstruction (`objective.name=autoencoder`: a loss a collapsed encoder
cannot lower) on the real EuroSAT chips (../shared/data/eurosat_ms, converted
once into --work-dir), all 13 bands in one token per 8 px patch, batch 16,
AdamW with a 10% warm-up then cosine: the same steps, samples and tokens at
both widths. Widths: nano (dim 128, 8 heads, predictor 128) and twice it (dim
256, 8 heads of 32, predictor 256). muP's base width is nano's, so nano's runs
are the same with and without it (spacenit.train.mup: exactly SP at m = 1) and
run once. A run's score is its mean reconstruction loss over the last 20% of
its steps (the trainer logs interval means every 10 steps). Prints the table
and the best rate of each curve, and writes it to --work-dir/lr_sweep.json.
"""

from __future__ import annotations

import argparse
import json
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
          "data.max_patch_size=8", "train.checkpoint_every=1000000", "tracking.log_system_metrics=false",
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
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--lrs", type=float, nargs="+", default=list(LRS))
    args = p.parse_args()
    work = args.work_dir.resolve()
    task = eurosat_task(args.data_root, work)
    if not (task.dataset_dir / "stats.json").is_file():
        compute_stats(task.dataset_dir, progress=False)
    results_path = work / "lr_sweep.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}  # resumable
    for curve, width, mup in CURVES:
        for lr in args.lrs:
            key = f"{curve} | lr {lr:g} | {args.steps} steps"
            if key in results:
                continue
            out = work / f"{width}-{'mup' if mup else 'sp'}-{lr:g}-{args.steps}"
            cfg = build_config("spacenit_nano", [*RECIPE, f"model.dim={width}", f"model.decoder_dim={width}",
                                                 f"model.mup={str(mup).lower()}", f"train.lr={lr}", f"train.steps={args.steps}",
                                                 f"train.warmup_steps={max(1, args.steps // 10)}"], preset="small")  # fmt: skip
            tick = time.perf_counter()
            pretrain(task.dataset_dir, task.dataset_dir / "stats.json", out, cfg, tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
                     experiment="lr-sweep", register_as=None)  # fmt: skip
            results[key] = {"curve": curve, "lr": lr, "steps": args.steps, "loss": score(out, args.steps),
                            "minutes": (time.perf_counter() - tick) / 60}  # fmt: skip
            print(f"{key}: loss {results[key]['loss']:.4f} ({results[key]['minutes']:.1f} min)", flush=True)
            results_path.write_text(json.dumps(results, indent=1))
    print(f"\n{'lr':>8} " + " ".join(f"{c:>14}" for c, _, _ in CURVES))
    for lr in args.lrs:
        cells = [results.get(f"{c} | lr {lr:g} | {args.steps} steps", {}).get("loss") for c, _, _ in CURVES]
        print(f"{lr:8g} " + " ".join(f"{v:14.4f}" if v is not None else f"{'-':>14}" for v in cells))
    for curve, _, _ in CURVES:
        runs = [r for r in results.values() if r["curve"] == curve and r["steps"] == args.steps]
        if runs:
            best = min(runs, key=lambda r: r["loss"])
            print(f"best lr, {curve}: {best['lr']:g} (loss {best['loss']:.4f})")


if __name__ == "__main__":
    main()
