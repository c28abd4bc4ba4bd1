"""A finished run folder as one object: its flags, label names, calibration temperature,
tokenizer and model; texts in, logits or calibrated probabilities out, in input order.
predict, evaluate, calibrate, the agreement matrix and the serving export all open runs
through it.

One precision rule (docs/using-the-model.md, "Precision"): a run's figures (its own
metrics.json, evaluate, calibrate, the agreement matrix) are computed in float32,
FIGURES_PRECISION, whatever it trained in; predict takes --precision (default auto, the
device's fast precision); serving/ is float32 (any CPU or GPU serves it).

Batched as evaluation is (data.length_batches: sorted by length, each batch padded to the
next fixed width): the choices eval/benchmark.py --predict measures beside serving/.

model/ is what this version writes (models.Classifier.save_to_folder: a KerasHub preset of
the encoder and tokenizer, head.json and head.weights.h5 beside it). A run folder whose
model/ the TensorFlow 2.15 / Keras 2 / transformers version wrote (tf_model.h5) is refused
in one line (check_model_format), naming the version and the commit that reads it.
"""
import functools
import os
from dataclasses import dataclass, field

import numpy as np

from common import calibration, data, models, phrasebank, runs, sources, storage
from common.errors import RunDirError

FIGURES_PRECISION = "fp32"


@dataclass
class FinishedRun:
    run_dir: str
    config: dict          # config.json as written
    flags: object         # its flags (a Config), with flags added since counting as their defaults (runs.run_flags)
    labels: tuple         # class names in id order
    temperature: float    # calibration.json's, 1.0 for a run made before calibration
    precision: str = None  # set by load_model
    _tokenizer: object = field(default=None, repr=False)
    _model: object = field(default=None, repr=False)

    @classmethod
    def open(cls, run_dir: str, flag: str = "run folder", calibrated: bool = True) -> "FinishedRun":
        """A clear error (one line) if run_dir is not a finished run or one of its files is
        not as its run wrote it: config.json (runs.load_run), calibration.json
        (calibration.temperature_of; not read with calibrated=False: eval/calibrate.py
        writes it again), model/ written by an older version of the project
        (check_model_format), model/'s classes against config.json's (check_labels)."""
        config = runs.load_run(run_dir, flag)
        check_model_format(run_dir, config)
        flags = runs.run_flags(config)
        labels = sources.labels_of(flags)
        check_labels(run_dir, labels)
        return cls(run_dir, config, flags, labels, calibration.temperature_of(run_dir) if calibrated else 1.0)

    @property
    def own_data(self) -> bool:
        """Trained on the user's own labelled files (not the PhraseBank)."""
        return sources.is_own(self.flags.data)

    @property
    def model_dir(self) -> str:
        return os.path.join(self.run_dir, runs.MODEL)

    @functools.cached_property
    def max_length(self) -> int:
        """--max-length, capped at the encoder's positions: a run made before
        training refused a longer one truncates there in predict, evaluate and serving/, as
        every text it trained on was (a longer one would have failed its training)."""
        return min(int(self.flags.max_length), models.position_limit(self.model_dir))

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = models.load_tokenizer(self.model_dir)
        return self._tokenizer

    @property
    def model(self):
        if self._model is None:
            self.load_model(FIGURES_PRECISION)
        return self._model

    def load_model(self, precision: str = FIGURES_PRECISION):
        """The run's classifier (library or custom head) at `precision` ('auto': the
        device's). The global dtype policy is put back afterwards: a training process
        exporting serving/ keeps its own."""
        from common import distribute
        from common.env import keras
        policy = keras.mixed_precision.global_policy()
        try:
            self.precision = distribute.set_precision(precision)
            self._model = self._build_model()
        finally:
            keras.mixed_precision.set_global_policy(policy)
        return self._model

    def _build_model(self):
        """The classifier under the dtype policy load_model set."""
        return models.build_classifier(self.model_dir, labels=self.labels)

    def split_rows(self, agreement: str = None, source: str = None, if_changed: str = "restore the file") -> dict:
        """{split: [(sentence, label)]}: the run's own data and split (own data: the split
        recorded in the run folder), or another PhraseBank level or source under its split rule.
        if_changed: the fix to name when own data changed since the run (the caller's options)."""
        if agreement is None and source is None:
            if self.own_data:  # the files it trained on, unchanged (their sha256 in config.json)
                if not storage.exists(self.flags.data):
                    raise RunDirError(f"run folder {self.run_dir}: the data its run trained on, {self.flags.data} "
                                      f"({runs.CONFIG} flags.data), is gone; {if_changed}")
                data_source = sources.resolve(self.flags)
                runs.check_data_files(self.run_dir, data_source.digests, "run folder", if_changed, self.config)
                return sources.splits(self.flags, data_source, os.path.join(self.run_dir, sources.SPLIT_FILE),
                                      record=False)
            return sources.splits(self.flags, sources.resolve(self.flags))
        return phrasebank.load_splits(source or self.flags.data, agreement or self.flags.agreement, self.flags.split)

    def encode(self, texts):
        """Token ids per text, truncated to the run's max_length; and how many were truncated."""
        texts = list(texts)
        ids = data.encode(self.tokenizer, texts, self.max_length + 1)  # one more: longer ones show as such
        long = [i for i, x in enumerate(ids) if len(x) > self.max_length]
        if long:
            for i, x in zip(long, data.encode(self.tokenizer, [texts[i] for i in long], self.max_length)):
                ids[i] = x
        return ids, len(long)

    def logits(self, ids, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Uncalibrated logits, float32, in input order."""
        step = models.logits_step(self.model)
        out = np.zeros((len(ids), len(self.labels)), np.float32)
        batches = data.length_batches(ids, batch_size, self.max_length, self.tokenizer.pad_token_id)
        if progress:  # a bar on stderr for long inputs
            from tqdm import tqdm
            batches = tqdm(batches, total=-(-len(ids) // batch_size), unit="batch", desc="predicting", leave=False)
        for idx, x in batches:
            out[idx] = step(x).numpy()
        return out

    def probabilities(self, texts, batch_size: int = 64, progress: bool = False):
        """(calibrated probabilities [n, classes], uncalibrated logits, texts truncated)."""
        ids, truncated = self.encode(texts)
        raw = self.logits(ids, batch_size, progress)
        return calibration.probabilities(raw, self.temperature), raw, truncated


# The last commit of the TensorFlow 2.15 / Keras 2 / transformers version: it reads the
# model/ folders that version wrote (tf_model.h5), which this one does not.
KERAS2_COMMIT = "dd16d3e"
KERAS2_WEIGHTS = "tf_model.h5"  # transformers' save_pretrained (TF): the encoder's weights
KERAS_HUB_METADATA = "metadata.json"  # a KerasHub preset's (save_to_preset): this version's model/


def written_by(config: dict) -> str:
    """The package versions config.json recorded (runs.versions), as one phrase."""
    versions = config.get("versions") if isinstance(config.get("versions"), dict) else {}
    shown = [f"{pkg} {versions[pkg]}" for pkg in ("tensorflow", "keras", "transformers") if versions.get(pkg)]
    commit = config.get("git_commit")
    if commit and isinstance(commit, str):
        shown.append(f"commit {commit[:12]}")
    return ", ".join(shown) or "versions not recorded"


def check_model_format(run_dir: str, config: dict) -> None:
    """model/ must be this version's (a KerasHub preset, head.json naming its architecture).
    One written by the TensorFlow 2.15 / Keras 2 / transformers version (tf_model.h5 beside
    transformers' config.json; a custom head's head.json without "architecture") is refused:
    Keras 3 and KerasHub do not read it."""
    model_dir = os.path.join(run_dir, runs.MODEL)
    if os.path.exists(os.path.join(model_dir, KERAS_HUB_METADATA)):
        return
    head_path = os.path.join(model_dir, models.HEAD_CONFIG)
    old = os.path.exists(os.path.join(model_dir, KERAS2_WEIGHTS))
    if not old and os.path.exists(head_path):
        try:
            head = runs.read_json(head_path)
        except (OSError, ValueError):
            head = None  # check_labels names a broken head.json
        old = isinstance(head, dict) and "architecture" not in head
    if old:
        raise RunDirError(
            f"{model_dir}: written by the TensorFlow 2.15 / Keras 2 / transformers version of this project "
            f"({written_by(config)}), which this version (Keras 3, KerasHub) cannot load; train it again with this "
            f"version, or use the release/commit before the Keras 3 move (git checkout {KERAS2_COMMIT})")


def check_labels(run_dir: str, labels: tuple) -> None:
    """config.json's classes (--labels, in id order) must be those model/ was trained for
    (model/head.json's labels): loaded for other classes, the model would get a new random
    output layer."""
    path = os.path.join(run_dir, runs.MODEL, models.HEAD_CONFIG)
    fix = f"restore the run's own {runs.MODEL}/ folder"
    if not os.path.exists(path):
        raise RunDirError(f"{path}: missing; {fix}")
    head = runs.read_run_json(path, fix)
    trained = head.get("labels")
    if not isinstance(trained, list) or not trained or not all(isinstance(x, str) for x in trained):
        raise runs.bad_field(path, "labels", trained, "the class names in id order", fix)
    if tuple(trained) != tuple(labels):
        ours, its = ",".join(labels), ",".join(trained)
        raise RunDirError(f"{os.path.join(run_dir, runs.CONFIG)}: flags.labels is \"{ours}\", but {path} is a "
                          f"classifier for {len(trained)} classes ({its}); set flags.labels to \"{its}\" (the model's "
                          f"classes in id order), or {fix}")


@dataclass
class PublishedModel(FinishedRun):
    """A model published by eval/publish.py (common/preset.py): a KerasHub task preset with
    finsent.json, in a local folder or fetched from the Hub. Predicts as the run it came
    from did: the same labels, tokenizer and probabilities (the calibration is in its
    logits, so its temperature here is 1)."""
    info: dict = field(default_factory=dict)

    @classmethod
    def open(cls, folder: str, flag: str = "model", calibrated: bool = True) -> "PublishedModel":
        from common import preset
        info = preset.read_info(folder)
        return cls(folder, {}, runs.run_flags({"flags": {"max_length": info["max_length"]}}), tuple(info["labels"]),
                   1.0, info=info)

    @property
    def own_data(self) -> bool:
        return False  # not known here: a published model carries no data

    @property
    def model_dir(self) -> str:
        return self.run_dir

    @functools.cached_property
    def max_length(self) -> int:
        return int(self.info["max_length"])

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from common import preset
            self._tokenizer = preset.load_tokenizer(self.run_dir, self.info)
        return self._tokenizer

    def _build_model(self):
        from common import preset
        return preset.load_classifier(self.run_dir, self.info)

    def split_rows(self, *args, **kwargs):
        raise RunDirError(f"{self.run_dir}: a published model, not a run folder: it holds no data splits; evaluate "
                          f"the run it was published from")


HUB_PREFIX = "hf://"


def open_trained(path: str, flag: str = "run folder"):
    """What predict.py takes: a finished run folder, a folder eval/publish.py wrote, or
    hf://OWNER/NAME (that folder on the Hugging Face Hub, fetched into its cache)."""
    from common import preset
    if path.startswith(HUB_PREFIX):
        path = fetch_published(path[len(HUB_PREFIX):], flag)
    if os.path.isdir(path) and preset.is_preset(path):
        return PublishedModel.open(path, flag)
    return FinishedRun.open(path, flag)


def fetch_published(repo: str, flag: str) -> str:
    """The Hub repository's files in the Hugging Face cache (common/hub.py: reached at once
    or not at all); one line if it is not there, not readable, or not a published model."""
    from huggingface_hub import snapshot_download
    from common import errors, hub, preset
    try:
        folder = snapshot_download(repo, **hub.call_kwargs())
    except Exception as e:  # not found, no rights, unreachable, a bad name: one line
        where = hub.unreachable_note() or f"on the Hub at {hub.endpoint()}"
        raise RunDirError(f"{flag} hf://{repo}: could not fetch it {where} ({type(e).__name__}: "
                          f"{errors.first_line(e)[:160]}); check the name, and HF_TOKEN for a private model") from e
    if not preset.is_preset(folder):
        raise RunDirError(f"{flag} hf://{repo}: not a model eval/publish.py published (no {preset.PRESET_INFO} and "
                          f"task.json); pass a run folder, or a model published with eval/publish.py")
    return folder

