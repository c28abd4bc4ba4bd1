"""Keras Tuner over Config fields: the train scripts' model and data, a search space per script.

A search space is a function (hp, cfg) -> cfg with some fields drawn from hp; the
hyperparameter names are Config field names, so the best trial is a set of train flags.
"""
import dataclasses
import os
import sys
import tempfile

from common import REPO_ROOT, config, data, errors, metrics, runs, sources, token_cache, training
from common import callbacks as cb
from common.env import keras

import keras_tuner as kt  # noqa: E402  (common.env first: Keras 3 on TensorFlow)


def add_search_flags(parser):
    g = parser.add_argument_group("search")
    g.add_argument("--tuner", choices=["bayesian", "hyperband"], default="bayesian",
                   help="bayesian: Gaussian-process search over --max-trials trials; hyperband: many short trials, "
                        "the best promoted to --epochs (keras-tuner's Hyperband, factor 3)")
    g.add_argument("--max-trials", type=int, default=8, help="bayesian: trials to run")
    g.add_argument("--executions-per-trial", type=int, default=1,
                   help="fits per trial; fit k trains with --seed + k (initial head, dropout, shuffle order) "
                        "and the trial scores the mean over them")
    g.add_argument("--train-best", action="store_true", help="then train the best configuration as a normal run")
    return g


class ConfigHyperModel(kt.HyperModel):
    """build(): the train scripts' build_model() for space(hp, cfg); fit(): Keras fit on
    the run's data (rebuilt when the batch size is a hyperparameter)."""

    def __init__(self, run, space):
        super().__init__()
        self.run, self.space = run, space
        self._splits = {(run.cfg.batch_size, run.cfg.seed): run.splits}  # data per batch size and seed
        # builds so far per HyperParameters object, i.e. per trial: its executions; the last build is
        # the one being fitted. Keyed by id(hp), holding hp: an id is unique only while its object
        # lives, and keras-tuner frees the hp it builds once to learn the search space, and (on a
        # distributed-tuning worker) each trial's after it ends; a new trial's hp taking a freed id
        # would otherwise count on from that build, and train with --seed + 1.
        self._builds = {}  # id(hp) -> (hp, builds)

    def trial(self, hp, execution: int = 0):
        """The run as trial `hp`'s flags make it; execution k trains with --seed + k."""
        cfg = self.space(hp, self.run.cfg)
        cfg = dataclasses.replace(cfg, seed=cfg.seed + execution)
        key = (cfg.batch_size, cfg.seed)
        if key not in self._splits:
            self._splits[key] = data.load_data(cfg, self.run.data_source, self.run.tokenizer,
                                               self.run.harness.replicas, token_cache.cache_dir_for(self.run.run_dir),
                                               os.path.join(self.run.run_dir, sources.SPLIT_FILE))
        return dataclasses.replace(self.run, cfg=cfg, splits=self._splits[key])

    def _executions(self, hp) -> int:
        """How many times `hp` (this very object) was built."""
        held, builds = self._builds.get(id(hp), (None, 0))
        return builds if held is hp else 0

    def build(self, hp):
        # Each trial starts from the seed, as its train script would: a new head's initial
        # weights, the dropout masks and the shuffle order then match what --train-best trains.
        # A trial's further executions (--executions-per-trial) take the next seeds for all
        # three, as `--seed 43`, `--seed 44` would: the trial's score is a mean over seeds.
        from common.env import set_seed
        execution = self._executions(hp)
        self._builds[id(hp)] = (hp, execution + 1)
        trial = self.trial(hp, execution)
        set_seed(trial.cfg.seed, trial.cfg.deterministic)
        return training.build_model(trial)

    def fit(self, hp, model, *args, callbacks=None, **kwargs):
        """The train scripts' fit path (class weights, unfreezing schedule, validation);
        Hyperband's initial_epoch continues a promoted trial's schedules where they were."""
        trial = self.trial(hp, max(0, self._executions(hp) - 1))
        history, _, _ = training.fit_model(
            model, trial.cfg, trial.splits, callbacks or [], epochs=kwargs.get("epochs", trial.cfg.epochs),
            initial_epoch=kwargs.get("initial_epoch", 0), verbose=kwargs.get("verbose", 2))
        return history


def with_trial_configs(tuner_class):
    """tuner_class, writing trials/trial_<id>/config.json before each trial: the train flags
    it trains with and what they resolve to (class weights, strategy), as a run's config.json."""

    class Tuner(tuner_class):
        def run_trial(self, trial, *args, **kwargs):
            run = self.hypermodel.run
            t = self.hypermodel.trial(trial.hyperparameters)
            resolved = {**training.resolved_settings(t), "hyperparameters": trial.hyperparameters.values}
            runs.write_config(self.get_trial_dir(trial.trial_id), t.cfg.to_dict(), f"{run.script}.py trial",
                              resolved, run.harness.devices)
            return super().run_trial(trial, *args, **kwargs)

    Tuner.__name__ = tuner_class.__name__
    return Tuner


def search(run, space, args, argv) -> list:
    """Run (or resume) the search; the chief writes best_hparams.json, trials.md/.csv;
    --train-best trains the winner with train/full_finetune.py. Returns the ranked trials."""
    cfg = run.cfg
    # Under TF_CONFIG every worker runs the same trials in lockstep (same seed, same scores);
    # only the chief keeps the tuner's state, the others write theirs to a throwaway folder.
    directory = run.run_dir if run.harness.is_chief else tempfile.mkdtemp(prefix="tuner-worker-")
    score = metrics.monitor(cfg.select_metric)  # --select-metric: what the best checkpoint and the decisions use
    common = dict(objective=kt.Objective(score, direction=metrics.SELECT_MODE[cfg.select_metric]),
                  directory=directory,
                  project_name=runs.TRIALS, overwrite=False, seed=cfg.seed,
                  executions_per_trial=args.executions_per_trial,
                  distribution_strategy=run.harness.strategy if run.harness.replicas > 1 else None)
    hypermodel = ConfigHyperModel(run, space)
    if args.tuner == "hyperband":
        tuner = with_trial_configs(kt.Hyperband)(hypermodel, max_epochs=cfg.epochs, factor=3, **common)
    else:
        tuner = with_trial_configs(kt.BayesianOptimization)(hypermodel, max_trials=args.max_trials, **common)
    # keras-tuner gives each trial its own TensorBoard folder and logs its hyperparameters (HParams)
    # (--tb-staging: each trial's event files are copied on the timer and at its end, when Keras
    # closes them; TensorFlow flushes an open one every 2 minutes)
    tb_dir = training.tb_folder(cfg, run.run_dir)
    copies = [cb.CopyTensorBoard(tb_dir, os.path.join(run.run_dir, runs.TB), cfg.tb_copy_every)] \
        if cfg.tb_staging and run.harness.is_chief else []
    tuner.search(epochs=cfg.epochs, callbacks=[keras.callbacks.TensorBoard(tb_dir, write_graph=False, profile_batch=0),
                                               *copies],
                 verbose=1 if sys.stdout.isatty() else 2)
    if os.environ.get("KERASTUNER_TUNER_ID", "chief") != "chief" or not run.harness.is_chief:
        return []  # a keras-tuner worker, or a non-chief MultiWorkerMirroredStrategy worker

    rows = ranked_trials(tuner.oracle, score)
    best = rows[0]  # ties go to the earliest trial, so a resumed search reports the same winner
    print(write_trials(run.run_dir, rows))
    print(f"best: {best} -> {run.run_dir}/best_hparams.json")
    command = train_best_command(best, sys.argv[1:] if argv is None else [str(a) for a in argv], run.run_dir)
    if args.train_best:
        errors.run_child(command)
    else:
        print("train it: python " + errors.shell_join(os.path.relpath(c) if os.path.isabs(c) else c for c in command[1:]))
    return rows


def ranked_trials(oracle, score: str = "val_macro_f1") -> list:
    """One row per trial (id, its score under the name `score`, hyperparameters), best first
    (keras-tuner's order: by the objective's direction; no score last)."""
    rows = []
    for t in oracle.get_best_trials(num_trials=10_000):
        hp = t.hyperparameters.values
        rows.append({"trial": t.trial_id, score: None if t.score is None else float(t.score),
                     **{k: hp[k] for k in sorted(hp) if not k.startswith("tuner/")}})
    sign = 1 if oracle.objective.direction == "min" else -1
    rows.sort(key=lambda r: (r[score] is None, sign * (r[score] or 0), int(r["trial"])))
    return rows


def write_trials(search_dir: str, rows: list) -> str:
    """best_hparams.json, trials.csv and trials.md; returns the markdown table. 'trial' is
    keras-tuner's trial id (its folder trials/trial_<id>); the table also shows the number
    keras-tuner printed for it ("Running Trial #n"): it numbers trials from 1 in the order it
    creates them, and their ids are that order from 0."""
    runs.write_json(os.path.join(search_dir, "best_hparams.json"), rows[0])
    keys = list(rows[0])
    runs.write_csv(os.path.join(search_dir, "trials.csv"), keys, [[r.get(k) for k in keys] for r in rows])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    table = "| rank | Trial # | " + " | ".join(keys) + " |\n|---|---|" + "---|" * len(keys) + "\n" + "\n".join(
        f"| {i} | {int(r['trial']) + 1} | " + " | ".join(fmt(r.get(k)) for k in keys) + " |"
        for i, r in enumerate(rows, 1))
    runs.write_text(os.path.join(search_dir, "trials.md"), table + "\n")
    return table


def train_best_command(best: dict, argv: list, search_dir: str) -> list:
    """train/full_finetune.py with the search's own flags and the best trial's values."""
    flags = [x for k, v in best.items() if k != "trial" and not k.startswith("val_")
             for x in ("--" + k.replace("_", "-"), str(v))]
    drop = {"--run-dir"} | set(flags[::2])
    return [sys.executable, os.path.join(REPO_ROOT, "train", "full_finetune.py"), *config.passthrough_flags(argv, drop),
            *flags, "--run-dir", os.path.join(search_dir, "best-run")]
