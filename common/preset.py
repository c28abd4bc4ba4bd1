"""A finished run's model as a KerasHub task preset, and such a preset opened again.

The preset is KerasHub's own (`task.save_to_preset`): a `DistilBertTextClassifier` or
`BertTextClassifier` with its preprocessor and tokenizer, which
`keras_hub.models.TextClassifier.from_preset(...)` loads without this project. The
library head maps onto those classes layer for layer (DistilBERT: pre_classifier ->
dropout -> logits is KerasHub's pooled_dense -> output_dropout -> output_dense; BERT: the
pooler -> dropout -> logits), so the weights are copied, not retrained. The calibrated
temperature is folded into the logits layer (kernel and bias divided by T), so the
softmax of the preset's logits is the calibrated probabilities predict.py gives. A custom
head (--head custom) has no KerasHub class and is refused.

Beside KerasHub's files, finsent.json holds what KerasHub's classifier does not: the label
names in id order, the temperature folded in, the run's max length, and the tokenizer's
Hugging Face normalisation (models.WordPieceTokenizer), which this project's predict.py uses
when it opens the preset. KerasHub's own tokenizer, which from_preset uses, gives the same
ids on ordinary text and differs on rare characters (no-break spaces, control characters:
models.WordPieceTokenizer's docstring); docs/using-the-model.md says so.
"""
import os

from common import models, runs
from common.errors import ModelError

PRESET_INFO = "finsent.json"
TASKS = {"distilbert": ("DistilBertTextClassifier", "DistilBertTextClassifierPreprocessor", "DistilBertTokenizer"),
         "bert": ("BertTextClassifier", "BertTextClassifierPreprocessor", "BertTokenizer")}


def is_preset(path: str) -> bool:
    return os.path.isfile(os.path.join(path, PRESET_INFO)) and os.path.isfile(os.path.join(path, "task.json"))


def write(run, folder: str) -> None:
    """The finished run (a FinishedRun) as a KerasHub task preset in `folder` (new or empty),
    with finsent.json. The model in float32 (the preset's dtype: any device loads it)."""
    import keras_hub
    model = run.model  # float32 (FinishedRun's figures precision)
    head = model.head
    if head.kind != "library":
        raise ModelError(f"{run.run_dir}: its head is --head custom, which KerasHub has no task class for; publish a "
                         f"run trained with the library head (the default), or share the run folder itself")
    task_name, preprocessor_name, tokenizer_name = TASKS[model.architecture]
    tokenizer = run.tokenizer
    own = tokenizer.get_config()
    keras_tokenizer = getattr(keras_hub.models, tokenizer_name)(
        vocabulary=tokenizer.vocabulary, lowercase=bool(own.get("hf_lowercase")),
        strip_accents=bool(own.get("strip_accents")))
    preprocessor = getattr(keras_hub.models, preprocessor_name)(tokenizer=keras_tokenizer,
                                                                sequence_length=run.max_length)
    task = getattr(keras_hub.models, task_name)(backbone=model.backbone, num_classes=len(run.labels),
                                                preprocessor=preprocessor, dropout=head.dropout)
    if model.architecture == "distilbert":
        task.pooled_dense.set_weights(head.hidden_layers[0].get_weights())
    kernel, bias = head.logits.get_weights()
    task.output_dense.set_weights([kernel / run.temperature, bias / run.temperature])
    task.save_to_preset(folder)
    runs.write_json(os.path.join(folder, PRESET_INFO), {
        "format": 1, "labels": list(run.labels), "architecture": model.architecture,
        "temperature": run.temperature, "temperature_in_logits": True, "max_length": run.max_length,
        "tokenizer": {k: v for k, v in own.items() if k not in ("vocabulary", "name", "dtype", "config_file")},
        "dropout": head.dropout, "run": os.path.basename(os.path.normpath(run.run_dir))})


def read_info(folder: str) -> dict:
    """finsent.json, checked: a preset this project wrote."""
    path = os.path.join(folder, PRESET_INFO)
    fix = "publish the run again (eval/publish.py)"
    info = runs.read_run_json(path, fix)
    labels = info.get("labels")
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels):
        raise runs.bad_field(path, "labels", labels, "the class names in id order", fix)
    if info.get("architecture") not in TASKS:
        raise runs.bad_field(path, "architecture", info.get("architecture"), " or ".join(TASKS), fix)
    if type(info.get("max_length")) is not int or info["max_length"] < 3:
        raise runs.bad_field(path, "max_length", info.get("max_length"), "a whole number of tokens", fix)
    return info


def load_tokenizer(folder: str, info: dict):
    """The run's tokenizer (models.WordPieceTokenizer, Hugging Face's normalisation) on the
    preset's vocabulary."""
    vocabulary = os.path.join(folder, "assets", "tokenizer", "vocabulary.txt")
    with open(vocabulary, encoding="utf-8") as f:
        words = [line.rstrip("\n") for line in f]
    return models.WordPieceTokenizer(vocabulary=words, **info["tokenizer"])


def load_classifier(folder: str, info: dict):
    """The preset as this project's models.Classifier (library head) under the global dtype
    policy: KerasHub loads the task; its backbone and head weights go into ours."""
    import keras_hub
    task = keras_hub.models.TextClassifier.from_preset(folder, load_weights=True)
    return models.from_task(task, info["labels"], info.get("dropout", -1.0))
