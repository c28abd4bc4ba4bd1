#!/usr/bin/env python
"""Keras Tuner search over the learning-rate schedule: peak rate (log scale), warm-up
share, weight decay (and, with --tune-batch-size, the batch size), on the same data
pipeline, model and strategy as the train scripts. Objective: validation macro-F1.

    python tune/lr_search.py --max-trials 8 --epochs 2
    python tune/lr_search.py --tuner hyperband --epochs 3
    python tune/lr_search.py --run-dir runs/lr-search --train-best    # resume it, then train the best

Writes runs/<search>/: best_hparams.json, trials.md + trials.csv (ranked), tb/ (one
TensorBoard run per trial, compared in the HParams dashboard), trials/ (keras-tuner's
state). Rerunning with the same --run-dir resumes: finished trials are not redone.
Distributed tuning: keras-tuner's chief/worker variables (README "Tuning").
"""
import dataclasses
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import env  # noqa: E402,F401  (first)
from common import config, runs, training  # noqa: E402
from common.env import REPO_ROOT, keras  # noqa: E402

import keras_tuner as kt  # noqa: E402  (after common.env: the same Keras 2.15)

SCRIPT = "lr_search"


def parse(argv=None):
    p = config.build_parser(__doc__, epochs=2)
    g = p.add_argument_group("search")
    g.add_argument("--tuner", choices=["bayesian", "hyperband"], default="bayesian")
    g.add_argument("--max-trials", type=int, default=8, help="bayesian: trials to run")
    g.add_argument("--executions-per-trial", type=int, default=1, help="fits per trial (averaged)")
    g.add_argument("--lr-range", default="1e-5,3e-4", help="peak learning rate range, searched on a log scale")
    g.add_argument("--tune-batch-size", action="store_true", help="also search the batch size (16, 32, 64)")
    g.add_argument("--train-best", action="store_true", help="then train the best configuration as a normal run")
    args = p.parse_args(argv)
    try:
        args.lr_lo, args.lr_hi = map(float, args.lr_range.split(","))
        assert 0 < args.lr_lo < args.lr_hi
    except (ValueError, AssertionError):
        p.error(f"--lr-range {args.lr_range!r}: expected LOW,HIGH with 0 < LOW < HIGH, e.g. 1e-5,3e-4")
    return args


class ScheduleHyperModel(kt.HyperModel):
    """The train scripts' model (build_model), with the schedule's knobs drawn from hp."""

    def __init__(self, run, args):
        super().__init__()
        self.run, self.args = run, args

    def trial_config(self, hp):
        return dataclasses.replace(
            self.run.cfg,
            lr=hp.Float("lr", self.args.lr_lo, self.args.lr_hi, sampling="log"),
            warmup=hp.Float("warmup", 0.0, 0.3, step=0.05),
            weight_decay=hp.Choice("weight_decay", [0.0, 0.01, 0.1]),
            batch_size=hp.Choice("batch_size", [16, 32, 64]) if self.args.tune_batch_size else self.run.cfg.batch_size)

    def build(self, hp):
        cfg = self.trial_config(hp)
        splits = self._splits(cfg)
        return training.build_model(dataclasses.replace(self.run, cfg=cfg, splits=splits))

    def fit(self, hp, model, *args, callbacks=None, **kwargs):
        cfg = self.trial_config(hp)
        splits = self._splits(cfg)  # the batch size may be a hyperparameter: data per trial
        return model.fit(splits.train, validation_data=splits.val, epochs=kwargs.get("epochs", cfg.epochs),
                         callbacks=callbacks, verbose=kwargs.get("verbose", 2))

    def _splits(self, cfg):
        if cfg.batch_size == self.run.cfg.batch_size:
            return self.run.splits
        return training.load_data(cfg, self.run.tokenizer, self.run.harness.replicas)


def ranked_trials(tuner) -> list:
    rows = []
    for t in tuner.oracle.get_best_trials(num_trials=10_000):
        hp = t.hyperparameters.values
        rows.append({"trial": t.trial_id, "val_macro_f1": t.score, **{k: hp[k] for k in sorted(hp) if not k.startswith("tuner/")}})
    return rows


def main(argv=None):
    args = parse(argv)
    cfg = config.from_args(args)
    run = training.start(cfg, SCRIPT)
    hypermodel = ScheduleHyperModel(run, args)
    common = dict(objective=kt.Objective("val_macro_f1", direction="max"), directory=run.run_dir,
                  project_name="trials", overwrite=False, seed=cfg.seed,
                  executions_per_trial=args.executions_per_trial,
                  distribution_strategy=run.harness.strategy if run.harness.replicas > 1 else None)
    if args.tuner == "hyperband":
        tuner = kt.Hyperband(hypermodel, max_epochs=cfg.epochs, factor=3, **common)
    else:
        tuner = kt.BayesianOptimization(hypermodel, max_trials=args.max_trials, **common)
    # keras-tuner gives each trial its own TensorBoard folder and logs its hyperparameters (HParams)
    tuner.search(epochs=cfg.epochs, callbacks=[keras.callbacks.TensorBoard(os.path.join(run.run_dir, runs.TB),
                                                                           write_graph=False, profile_batch=0)],
                 verbose=1 if sys.stdout.isatty() else 2)

    if "KERASTUNER_TUNER_ID" in os.environ and os.environ["KERASTUNER_TUNER_ID"] != "chief":
        return None  # a worker: the chief writes the results
    rows = ranked_trials(tuner)
    best = rows[0]
    runs.write_json(os.path.join(run.run_dir, "best_hparams.json"), best)
    keys = list(rows[0])
    runs.write_csv(os.path.join(run.run_dir, "trials.csv"), keys, [[r.get(k) for k in keys] for r in rows])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    table = "| rank | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys) + "\n" + "\n".join(
        f"| {i} | " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for i, r in enumerate(rows, 1))
    runs.write_text(os.path.join(run.run_dir, "trials.md"), table + "\n")
    print(table)
    print(f"best: {best} -> {run.run_dir}/best_hparams.json")

    if args.train_best:
        flags = ["--lr", str(best["lr"]), "--warmup", str(best["warmup"]), "--weight-decay", str(best["weight_decay"])]
        if "batch_size" in best:
            flags += ["--batch-size", str(best["batch_size"])]
        keep = [a for a in (argv if argv is not None else sys.argv[1:])]
        passthrough = config.passthrough_flags(keep, drop={"--run-dir", "--lr", "--warmup", "--weight-decay"})
        subprocess.run([sys.executable, os.path.join(REPO_ROOT, "train", "full_finetune.py"), *passthrough, *flags,
                        "--run-dir", os.path.join(run.run_dir, "best-run")], check=True)
    return rows


if __name__ == "__main__":
    main()
