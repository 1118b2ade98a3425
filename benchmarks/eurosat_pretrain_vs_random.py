"""Does pretraining help? A nano encoder pretrained on EuroSAT for at most N minutes vs its random twin.

End to end on the real chips in ../shared/data/eurosat_ms (216 Sentinel-2 L1C
chips, 10 classes):

1. convert (class folders) + stats, cached in --work-dir;
2. time a few pretraining steps, then pretrain nano for as many steps as fit
   in --budget-min minutes (the schedule is set for that many steps);
3. score the pretrained encoder, the same architecture at random
   initialization, and the raw-pixel baseline (per band mean/std) with the
   same probes, 5-fold cross-fitted (every chip is predicted once by a probe
   that did not see it), 95% bootstrap CIs;
4. print the kNN verdict (non-overlapping CIs?) as soon as it is known, and
   the paired bootstrap interval of the difference (same chips, same resamples);
5. fill in the rest of the report: few-shot kNN / linear / prototypical,
   attentive and fine-tuning on EuroSAT, every probe on BigEarthNet (the
   EuroSAT encoder on L2A bands matched by name), and write it.

    python benchmarks/eurosat_pretrain_vs_random.py --budget-min 15 --work-dir eval-work/eurosat-run
    python benchmarks/eurosat_pretrain_vs_random.py --steps 300 --skip-extra --set train.optimizer=muon \
        --work-dir eval-work/eurosat-muon      # a fixed step budget, e.g. to compare optimizers

The CPU may be shared: the step time is measured on the spot, so a busy
machine gets fewer steps rather than a longer run (unless --steps fixes them).
Training starts from the "small" preset (LR 1e-3, warm-up 5% of the steps).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from spacenit.evaluation.adapters import RawPixelAdapter, SpaceNitAdapter
from spacenit.evaluation.benchmark import BenchmarkOptions, cell_scores, run_benchmark
from spacenit.evaluation.bootstrap import Estimate, paired_difference
from spacenit.evaluation.datasets import bigearthnet_task, eurosat_task
from spacenit.evaluation.finetune import FinetuneConfig
from spacenit.evaluation.report import write_report
from spacenit.evaluation.results import ResultKey, ResultsStore
from spacenit.evaluation.splits import ALL
from spacenit.train.pretrain import build_config, pretrain

#: Pretraining settings for a short CPU run: tokens at the evaluation patch size only (no random
#: patch sizes), no intermediate checkpoints or system metrics, and the best objective found on
#: this benchmark (docs/evaluation.md): two-view contrast of small crops (8-50% of the chip) at a
#: fixed temperature of 0.2, batch 32, without latent prediction, each view with its own 30% of
#: the bands blanked, all 13 bands in one token per patch (a third of the tokens of the
#: spectral groups, so about 2.5x the steps). `--set` adds or overrides.
DEFAULT_OVERRIDES = [
    "data.min_patch_size=8",
    "data.max_patch_size=8",
    "train.checkpoint_every=1000000",
    "tracking.log_system_metrics=false",
    "tracking.log_checkpoints=false",
    "objective.name=view_contrast",
    "objective.latent_weight=0",
    "objective.view_crop_scale=[0.08,0.5]",
    "objective.learn_temperature=false",
    "objective.contrastive_temperature=0.2",
    "train.global_batch_size=32",
    "model.tokenization.band_dropout=0.3",
    "model.tokenization.preset=single_bandset",
]


def timed_pretrain(dataset: Path, out: Path, steps: int, overrides: list[str], tracking_uri: str):
    cfg = build_config("spacenit_nano", [f"train.steps={steps}", f"train.warmup_steps={max(1, steps // 20)}", *overrides],
                       preset="small")  # fmt: skip
    tick = time.perf_counter()
    result = pretrain(dataset, dataset / "stats.json", out, cfg, tracking_uri=tracking_uri, experiment="eurosat-pretrain", register_as=None)
    return result, time.perf_counter() - tick


def steady_step_time(tracking_uri: str, run_id: str) -> float:
    """The slowest logged interval's seconds per step after the first interval of an MLflow run."""
    from mlflow.tracking import MlflowClient

    history = sorted(MlflowClient(tracking_uri).get_metric_history(run_id, "train/step_time_s"), key=lambda m: m.step)
    if len(history) < 2:
        raise RuntimeError(f"run {run_id} logged train/step_time_s {len(history)} time(s); calibration needs 2 or more")
    return max(m.value for m in history[1:])


def calibrated_steps(dataset: Path, work: Path, overrides: list[str], tracking_uri: str, budget_min: float) -> tuple[int, float]:
    """(steps that fit in `budget_min` minutes, seconds per step), from a calibration run."""
    # Calibrate: a 25-step run's steady step time, from the trainer's own train/step_time_s (logged
    # every 10 steps to MLflow; the first interval holds the loader's start and is left out).
    # Whole-run means include the fixed costs (a 0.58 s step once measured 1.3 s over 25 steps),
    # and the difference of two short runs is noisy (once 0.78 s where the run took 1.17).
    # A first one-step run takes the one-off costs (the MLflow store's schema, imports) out.
    timed_pretrain(dataset, work / "calibrate-warmup", 1, overrides, tracking_uri)
    calibration, t_calibration = timed_pretrain(dataset, work / "calibrate", 25, overrides, tracking_uri)
    per_step = steady_step_time(tracking_uri, calibration.run_id)
    fixed = max(t_calibration - 25 * per_step, 0.0)
    # 15% headroom: this shared machine's step time drifts by that much within one run (a run
    # calibrated at 0.38 s a step went at 0.46 on average: 17.2 minutes for a budget of 15).
    steps = max(int((budget_min * 60 - fixed) / per_step * 0.85), 10)
    print(f"calibration: {per_step:.2f} s/step, {fixed:.0f} s fixed -> {steps} steps for {budget_min} min", flush=True)
    return steps, per_step


def knn_verdict(store: ResultsStore, adapters, pretrained_name: str) -> dict:
    knn = {a.name: store.get(ResultKey("eurosat", a.name, "knn", ALL, 0)).metrics["accuracy"] for a in adapters}
    est = {name: Estimate(m["value"], m["low"], m["high"]) for name, m in knn.items()}
    for name, e in est.items():
        print(f"EuroSAT kNN accuracy {name}: {e}")
    trained, random = est[pretrained_name], est[adapters[1].name]
    verdict = trained.value > random.value and not trained.overlaps(random)
    print(f"pretrained beats random init with non-overlapping 95% CIs: {verdict}")
    print(f"pretrained vs raw pixels: {trained} vs {est['raw_pixels']}")
    return {"knn_accuracy": knn, "pretrained_beats_random_non_overlapping": verdict}


def paired_knn_differences(task, pretrained, baselines) -> dict:
    """kNN accuracy of pretrained minus each baseline's, bootstrapped on the same chips (the paired test)."""
    options = BenchmarkOptions(probes=("knn",))
    scores = {m.name: cell_scores(task, m, m.features(task), "knn", ALL, 0, options)[0] for m in (pretrained, *baselines)}
    out = {}
    for baseline in baselines:
        a, b = scores[pretrained.name], scores[baseline.name]
        tested = ~(np.isnan(a).any(axis=1) | np.isnan(b).any(axis=1))
        diff = paired_difference(task.targets[tested], a[tested], b[tested], "accuracy", num_resamples=options.num_resamples)
        print(f"pretrained - {baseline.name}, paired bootstrap on the same chips: {diff}; excludes 0: {diff.low > 0 or diff.high < 0}")
        out[baseline.name] = {"value": diff.value, "low": diff.low, "high": diff.high}
    return {"paired_knn_accuracy_difference": out}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    p.add_argument("--work-dir", type=Path, default=Path("eval-work/eurosat-pretrain-vs-random"))
    p.add_argument("--budget-min", type=float, default=15.0, help="wall-clock minutes of pretraining, at most")
    p.add_argument("--steps", type=int, default=None, help="pretrain exactly this many steps (no calibration, no time budget)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="pretraining config override (repeatable)")
    p.add_argument("--skip-extra", action="store_true", help="only the kNN verdict: no few-shot, attentive, fine-tuning, BigEarthNet")
    args = p.parse_args()
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    overrides = DEFAULT_OVERRIDES + args.overrides
    task = eurosat_task(args.data_root, work)

    if args.steps:
        steps, per_step = args.steps, None
    else:
        steps, per_step = calibrated_steps(task.dataset_dir, work, overrides, tracking_uri, args.budget_min)

    result, wall = timed_pretrain(task.dataset_dir, work / "pretrain", steps, overrides, tracking_uri)
    per_step = per_step or wall / steps  # a fixed step budget: the whole run's mean
    print(f"pretrained {steps} steps in {wall / 60:.1f} min, final loss {result.final_loss:.4f}", flush=True)
    if not args.steps and wall > args.budget_min * 60:
        print(f"WARNING: pretraining overran its budget of {args.budget_min} min (the machine slowed down after "
              "the calibration); the comparison below is for a longer run than asked", flush=True)  # fmt: skip
    summary = {"steps": steps, "pretrain_minutes": wall / 60, "seconds_per_step": per_step, "final_loss": result.final_loss,
               "overrides": overrides}  # fmt: skip

    pretrained = SpaceNitAdapter.from_checkpoint(result.checkpoint_dir, name=f"nano-pretrained-{steps}steps")
    adapters = [pretrained, pretrained.random_twin(seed=0), RawPixelAdapter()]
    store = ResultsStore(work / "results.sqlite")
    log = {"tracking_uri": tracking_uri, "experiment": "eurosat-eval"}
    tick = time.perf_counter()
    # The target first: kNN with every training sample, for the three models.
    run_benchmark(task, adapters, store=store, options=BenchmarkOptions(probes=("knn",)), **log)
    summary.update(knn_verdict(store, adapters, pretrained.name))
    summary.update(paired_knn_differences(task, pretrained, adapters[1:]))
    (work / "summary.json").write_text(json.dumps(summary, indent=1))
    if not args.skip_extra:
        few_shot = BenchmarkOptions(probes=("knn", "linear", "prototypical"), n_train=(1, 5, 10, ALL))
        run_benchmark(task, adapters, store=store, options=few_shot, **log)
        # Fine-tuning at FinetuneConfig's 10 epochs (~110 steps a fold, ~1 min a model here): at 2
        # epochs the new head had not converged and the pretrained encoder scored 0.352, below
        # random init's 0.426; at 10, 0.653 vs 0.542.
        heavy = BenchmarkOptions(probes=("attentive", "finetune"), finetune=FinetuneConfig())
        run_benchmark(task, adapters, store=store, options=heavy, **log)
        # BigEarthNet: the EuroSAT (L1C) encoder on L2A bands by name (B10 missing); S1 is not one of its sensors.
        ben = bigearthnet_task(args.data_root, work)
        on_l2a = [SpaceNitAdapter(a.model, a.meta, name=a.name, sensor_map="auto") for a in adapters[:2]]
        all_probes = BenchmarkOptions(probes=("knn", "linear", "prototypical", "attentive", "finetune"), finetune=FinetuneConfig(epochs=5))
        run_benchmark(ben, [*on_l2a, RawPixelAdapter()], store=store, options=all_probes, **log)
    summary["evaluation_minutes"] = (time.perf_counter() - tick) / 60
    (work / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"evaluation: {summary['evaluation_minutes']:.1f} min; report: {write_report(store, work / 'report.md')}")


if __name__ == "__main__":
    main()
