"""The serving SavedModel: raw strings in; label ids, label names and calibrated
probabilities out. The tokenizer runs inside the graph: the run's own KerasHub WordPiece
tokenizer layer (tensorflow-text ops), the one eval/predict.py and training use, so the
ids are theirs by construction. TF Serving, a Dataflow job or any `tf.saved_model.load`
needs TensorFlow and `import tensorflow_text` (which registers the tokenizer's ops), and
neither KerasHub, transformers nor the `tokenizers` library.

Only WordPiece (BERT-family) tokenizers are exported: the graph frames each text as
[CLS] pieces [SEP], as eval/predict.py does (common/token_cache.py); another tokenizer
would need another framing, so export refuses it instead.
"""
import functools
import os

from common.env import tf
from common.errors import ModelError

SIGNATURE = "serving_default"


def check_tokenizer(tokenizer) -> None:
    """A ModelError unless the graph can frame this tokenizer's ids as eval/predict.py does:
    a KerasHub WordPiece tokenizer with [CLS], [SEP] and [PAD] ids."""
    import keras_hub
    ids = [getattr(tokenizer, f"{name}_token_id", None) for name in ("cls", "sep", "pad")]
    if not isinstance(tokenizer, keras_hub.tokenizers.WordPieceTokenizer) or None in ids:
        raise ModelError(f"serving export supports WordPiece (BERT-family) tokenizers only; this model's is "
                         f"{type(tokenizer).__name__}. Serve it with eval/predict.py instead")


class SentimentServer(tf.Module):
    """serving_default(text: string[batch]) -> {label_id, label, probabilities}; and
    token_ids(text) -> {input_ids, attention_mask}, the ids it classifies."""

    def __init__(self, model, tokenizer, max_length: int, temperature: float, labels):
        """model: the run's float32 classifier; tokenizer: its KerasHub WordPiece tokenizer
        (check_tokenizer); labels: class names in id order."""
        super().__init__()
        # The model's variables are tracked, the Keras model is not: tf.saved_model.save would
        # walk every one of its layers and trace Keras 3's own signature for it, which nothing
        # here serves (~2 s a save; docs/performance.md). This list is what lets the save find
        # the variables the graph below captures. The tokenizer keeps its vocabulary inside
        # the graph.
        self.model_variables = list(model.variables)
        self._classify = functools.partial(model, training=False)
        self.tokenizer = tokenizer
        self.cls, self.sep, self.pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
        self.max_length = int(max_length)
        self.temperature = tf.Variable(float(temperature), trainable=False, name="temperature")
        self.labels = tf.constant(list(labels))

    # No AutoGraph: the model and tokenizer code is graph-safe (see models.logits_step), and
    # converting it costs seconds per export.
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")], autograph=False)
    def serve(self, text):
        inputs = self._inputs(text)
        n = tf.shape(inputs["input_ids"])[0]
        return tf.cond(n > 0, lambda: self._label(inputs), lambda: {
            "label_id": tf.zeros([0], tf.int32), "label": tf.zeros([0], tf.string),
            "probabilities": tf.zeros([0, self.labels.shape[0]], tf.float32)})

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")], autograph=False)
    def token_ids(self, text):
        """{input_ids, attention_mask}: what serve() feeds the model for these texts (a
        loaded SavedModel's `.token_ids(text)`: to compare with eval/predict.py's ids)."""
        return self._inputs(text)

    def _inputs(self, text):
        # One rule with eval/predict.py (docs/using-the-model.md): a text with no tokens (empty,
        # blank) is refused, the request failing with this message; an empty batch gives zero
        # rows; a long text is truncated to the run's max length (capped at the encoder's
        # positions): [CLS] + its first max_length - 2 pieces + [SEP], as token_cache.encode.
        pieces = self.tokenizer(text)  # ragged [batch, (pieces)], no special tokens
        empty = tf.where(pieces.row_lengths() == 0)[:, 0]
        refuse = tf.debugging.Assert(tf.size(empty) == 0, [
            "serving: no tokens (an empty or blank text) in the texts at batch index", empty,
            "; drop them before calling (eval/predict.py refuses them too; docs/using-the-model.md)"], summarize=10)
        with tf.control_dependencies([refuse]):
            pieces = tf.cast(pieces[:, : max(0, self.max_length - 2)], tf.int32)  # room for [CLS] and [SEP]
            n = tf.identity(pieces.nrows())
        ids = tf.concat([tf.fill([n, 1], self.cls), pieces, tf.fill([n, 1], self.sep)], axis=1)
        return {"input_ids": ids.to_tensor(default_value=self.pad),  # padded to this batch's longest sentence
                "attention_mask": tf.ones_like(ids).to_tensor(default_value=0)}

    def _label(self, inputs):
        logits = tf.cast(self._classify(inputs), tf.float32)
        probs = tf.nn.softmax(logits / self.temperature, axis=-1)
        label_id = tf.argmax(probs, axis=-1, output_type=tf.int32)
        return {"label_id": label_id, "label": tf.gather(self.labels, label_id), "probabilities": probs}


def export_serving(run_dir: str) -> str:
    """Write run_dir/serving/ from run_dir/model (float32, whatever the run trained in) and
    the run's temperature; atomically (a temporary folder, then rename). Returns its path."""
    from common import runs
    from common.finished_run import FinishedRun
    run = FinishedRun.open(run_dir)
    check_tokenizer(run.tokenizer)  # refuse before loading any weights
    model = run.load_model("fp32")  # portable: any CPU or GPU serves it
    server = SentimentServer(model, run.tokenizer, run.max_length, run.temperature, run.labels)
    final = os.path.join(run_dir, runs.SERVING)
    tmp = runs.staging_dir(final)
    tf.saved_model.save(server, tmp, signatures={SIGNATURE: server.serve})
    runs.publish_dir(tmp, final)
    return final
