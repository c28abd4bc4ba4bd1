"""The serving SavedModel: raw strings in; label ids, label names and calibrated
probabilities out. The tokenizer runs inside the graph (tensorflow-text's
FastBertTokenizer on the run's own vocab), so TF Serving, a Dataflow job or any
`tf.saved_model.load` needs neither Python tokenizers nor transformers.

Only WordPiece (BERT-family) tokenizers are exported: another tokenizer in the graph
would give other ids than training did, so export refuses it instead.
"""
import json
import os


from common.env import tf
from common.errors import ModelError

SERVING = "serving"
SIGNATURE = "serving_default"


def wordpiece_settings(tokenizer) -> dict:
    """What FastBertTokenizer needs to reproduce this (fast, transformers) tokenizer's ids.
    A ModelError for anything it cannot reproduce."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    kind = spec.get("model", {}).get("type")
    norm = spec.get("normalizer") or {}
    if kind != "WordPiece" or norm.get("type") != "BertNormalizer":
        raise ModelError(f"serving export supports WordPiece (BERT-family) tokenizers only; this model's is "
                         f"{kind or type(tokenizer).__name__}. Serve it with eval/predict.py instead")
    lower = bool(norm.get("lowercase"))
    strip = norm.get("strip_accents")
    if (lower if strip is None else bool(strip)) != lower:  # None: strip accents when lower-casing
        # FastBertTokenizer lower-cases and strips accents together, or does neither
        raise ModelError(f"serving export: lowercase={lower} with strip_accents={strip} has no tensorflow-text "
                         f"equivalent; serve this model with eval/predict.py")
    vocab = [None] * len(tokenizer.get_vocab())
    for token, i in tokenizer.get_vocab().items():
        vocab[i] = token
    return {"vocab": vocab, "lower_case": lower, "unk": tokenizer.unk_token,
            "clean_text": norm.get("clean_text", True),
            "suffix": spec["model"].get("continuing_subword_prefix", "##"),
            "cls": tokenizer.cls_token_id, "sep": tokenizer.sep_token_id, "pad": tokenizer.pad_token_id}


class SentimentServer(tf.Module):
    """serving_default(text: string[batch]) -> {label_id, label, probabilities}."""

    def __init__(self, model, w: dict, max_length: int, temperature: float, labels):
        """w: wordpiece_settings() of the run's tokenizer; labels: class names in id order."""
        super().__init__()
        import tensorflow_text as text
        # The weights are tracked, the Keras model is not: saving a tracked Keras model also
        # traces every layer's call for Keras' own loading, which doubled a small run's time.
        self.weights = list(model.weights)
        self._classify = lambda inputs: model(inputs, training=False)  # a plain function: not tracked
        self.tokenizer = text.FastBertTokenizer(vocab=w["vocab"], suffix_indicator=w["suffix"],
                                                unknown_token=w["unk"], token_out_type=tf.int32,
                                                lower_case_nfd_strip_accents=w["lower_case"])
        self.cls, self.sep, self.pad = w["cls"], w["sep"], w["pad"]
        self.clean_text = w.get("clean_text", True)
        self.max_length = int(max_length)
        self.temperature = tf.Variable(float(temperature), trainable=False, name="temperature")
        self.labels = tf.constant(list(labels))

    # No AutoGraph: the model code is graph-safe (see training.compile_classifier), and
    # converting transformers' functions costs seconds per export.
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")], autograph=False)
    def serve(self, text):
        # One rule with eval/predict.py (docs/using-the-model.md): a text with no tokens (empty,
        # blank) is refused, the request failing with this message; an empty batch gives zero
        # rows; a long text is truncated to the run's max length (capped at the encoder's positions).
        if self.clean_text:  # BertNormalizer drops U+FFFD; FastBertTokenizer makes it [UNK]
            text = tf.strings.regex_replace(text, "\ufffd", "")
        pieces = self.tokenizer.tokenize(text)
        empty = tf.where(pieces.row_lengths() == 0)[:, 0]
        refuse = tf.debugging.Assert(tf.size(empty) == 0, [
            "serving: no tokens (an empty or blank text) in the texts at batch index", empty,
            "; drop them before calling (eval/predict.py refuses them too; docs/using-the-model.md)"], summarize=10)
        with tf.control_dependencies([refuse]):
            pieces = pieces[:, : self.max_length - 2]  # room for [CLS] and [SEP]
            n = tf.identity(pieces.nrows())
        return tf.cond(n > 0, lambda: self._label(pieces, n), lambda: {
            "label_id": tf.zeros([0], tf.int32), "label": tf.zeros([0], tf.string),
            "probabilities": tf.zeros([0, self.labels.shape[0]], tf.float32)})

    def _label(self, pieces, n):
        ids = tf.concat([tf.fill([n, 1], self.cls), pieces, tf.fill([n, 1], self.sep)], axis=1)
        input_ids = ids.to_tensor(default_value=self.pad)  # padded to this batch's longest sentence
        mask = tf.ones_like(ids).to_tensor(default_value=0)
        out = self._classify({"input_ids": input_ids, "attention_mask": mask})
        logits = tf.cast(getattr(out, "logits", out), tf.float32)
        probs = tf.nn.softmax(logits / self.temperature, axis=-1)
        label_id = tf.argmax(probs, axis=-1, output_type=tf.int32)
        return {"label_id": label_id, "label": tf.gather(self.labels, label_id), "probabilities": probs}


def export_serving(run_dir: str) -> str:
    """Write run_dir/serving/ from run_dir/model (float32, whatever the run trained in) and
    the run's temperature; atomically (a temporary folder, then rename). Returns its path."""
    from common import runs
    from common.finished_run import FinishedRun
    run = FinishedRun.open(run_dir)
    settings = wordpiece_settings(run.tokenizer)  # refuse before loading any weights
    model = run.load_model("fp32")  # portable: any CPU or GPU serves it
    server = SentimentServer(model, settings, run.max_length, run.temperature, run.labels)
    final = os.path.join(run_dir, SERVING)
    tmp = runs.fresh_dir(final + ".tmp")  # (a stopped export's leftovers removed)
    tf.saved_model.save(server, tmp, signatures={SIGNATURE: server.serve})
    runs.publish_dir(tmp, final)
    return final

