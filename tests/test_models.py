"""Models through KerasHub (common/models.py): what loads, what is refused in one line, the
tokenizer's ids against the Hugging Face `tokenizers` library, a checkpoint's own head."""
import json
import os
import shutil

import numpy as np
import pytest

from common import models, phrasebank, token_cache
from tests import tiny_models
from tests.conftest import assert_one_line_error, reference_ids, run_script

LABELS = ("negative", "neutral", "positive")


@pytest.mark.parametrize("model_type", ["albert", "electra"])
def test_another_architecture_is_refused_in_one_line_naming_the_ones_that_work(model_type, data_dir, tmp_path):
    """albert: KerasHub converts it, this project does not train it; electra: KerasHub has no converter."""
    folder = tiny_models.write_config_only(str(tmp_path / model_type), model_type)
    p = run_script("train/full_finetune.py", "--model", folder, "--data", data_dir, "--run-dir", tmp_path / "run",
                   check=False)
    assert_one_line_error(p, "train/full_finetune.py", f"a model_type '{model_type}' model; this project trains "
                                                       f"DistilBERT and BERT encoders")
    assert not (tmp_path / "run").exists()


def test_a_folder_without_safetensors_weights_is_refused_naming_the_format(tiny_distilbert, tmp_path):
    folder = tmp_path / "pt-only"
    shutil.copytree(tiny_distilbert, folder)
    os.rename(folder / "model.safetensors", folder / "pytorch_model.bin")
    with pytest.raises(models.ModelError, match="no model.safetensors in .*KerasHub reads Hugging Face weights in "
                                                "the safetensors format only"):
        models.build_classifier(str(folder), LABELS)


def test_a_path_that_does_not_exist_is_no_such_folder(tmp_path):
    with pytest.raises(models.ModelError, match="no such folder"):
        models.local_folder(str(tmp_path / "nope"))


def test_token_ids_equal_the_hugging_face_tokenizers_on_the_whole_phrasebank_and_odd_text(minilm, data_dir):
    """KerasHub's WordPiece alone differs (no-break spaces, control characters, case folding of
    'ß', 'ﬁ', '½', full-width letters: common/models.py WordPieceTokenizer)."""
    sentences = [s for part in phrasebank.load_splits(data_dir, "50").values() for s, _ in part]
    odd = ["x\u00a0y", "Stra\u00dfe \ufb01ne \u00bd \u00bc", "a\u3000b\u2028c\u2029d", "A\x85B\x0bC\x1cD",
           "\ufffdok\x00", "\uff26\uff55\uff4c\uff4c", "H\u00e9llo W\u00d6RLD", "zero\u200bwidth", "", "  "]
    tok = models.load_tokenizer(minilm)
    ours = token_cache.encode(tok, sentences + odd, 128)
    assert ours == reference_ids(sentences + odd, 128)
    assert len(sentences) > 4800


def test_dropout_minus_one_keeps_the_checkpoints_value(tmp_path):
    folder = tiny_models.tiny_distilbert_at(str(tmp_path / "d"))
    config = json.loads(open(os.path.join(folder, "config.json")).read())
    config["seq_classif_dropout"] = 0.35
    open(os.path.join(folder, "config.json"), "w").write(json.dumps(config))
    assert models.build_classifier(folder, LABELS).head.dropout == 0.35
    assert models.build_classifier(folder, LABELS, dropout=0.05).head.dropout == 0.05


@pytest.mark.parametrize("model_type", ["distilbert", "bert"])
def test_a_classifier_checkpoints_own_head_is_kept_for_its_classes_only(model_type, tmp_path):
    """The Hugging Face classifier head (DistilBERT's pre_classifier + classifier, BERT's
    classifier) ported as the checkpoint holds it, PyTorch's [out, in] transposed; for other
    class names the output layer starts new and the layers below it stay."""
    from safetensors.numpy import load_file
    folder = tiny_models.write_hf_folder(str(tmp_path / model_type), model_type, labels=list(LABELS))
    weights = load_file(os.path.join(folder, "model.safetensors"))
    model = models.build_classifier(folder, LABELS)
    np.testing.assert_array_equal(model.head.logits.kernel.numpy(), weights["classifier.weight"].T)
    np.testing.assert_array_equal(model.head.logits.bias.numpy(), weights["classifier.bias"])
    other = models.build_classifier(folder, ("bearish", "neutral", "bullish"))
    assert not np.array_equal(other.head.logits.kernel.numpy(), weights["classifier.weight"].T)
    if model_type == "distilbert":
        for m in (model, other):
            np.testing.assert_array_equal(m.head.hidden_layers[0].kernel.numpy(), weights["pre_classifier.weight"].T)


def test_logits_are_float32_under_every_policy(tiny_bert):
    from common.env import keras
    for policy in ("mixed_bfloat16", "mixed_float16", "float32"):
        keras.mixed_precision.set_global_policy(policy)
        try:
            model = models.build_classifier(tiny_bert, LABELS)
            assert model.backbone.compute_dtype == policy.removeprefix("mixed_")
            assert models.logits_dtype(model) == "float32"
        finally:
            keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("architecture", ["distilbert", "bert"])
def test_attention_projections_run_as_matmul_and_compute_what_einsum_does(architecture, tiny_distilbert, tiny_bert):
    """The attention projections' 2-D MatMuls (models.attention_projections_as_matmul) give
    Keras's EinsumDense logits and gradients, in float32 and under mixed_bfloat16, and the
    traced graph runs each of them as a 2-D MatMul (the speed: docs/results.md)."""
    from common.env import keras, tf
    folder = {"distilbert": tiny_distilbert, "bert": tiny_bert}[architecture]
    ids = np.array([[101, 2000, 3000, 4000, 102, 0, 0], [101, 2500, 2600, 102, 0, 0, 0]], np.int32)
    inputs = {"input_ids": tf.constant(ids), "attention_mask": tf.constant((ids > 0).astype(np.int32))}
    for policy, tolerance in (("float32", 1e-5), ("mixed_bfloat16", 2e-2)):
        keras.mixed_precision.set_global_policy(policy)
        try:
            model = models.build_classifier(folder, LABELS)
        finally:
            keras.mixed_precision.set_global_policy("float32")

        def logits_and_gradients():
            with tf.GradientTape() as tape:
                logits = model(inputs, training=False)
                loss = tf.reduce_sum(logits * logits)
            return logits.numpy(), [tf.convert_to_tensor(g).numpy()
                                    for g in tape.gradient(loss, model.trainable_variables)]

        def matmuls():  # 2-D MatMul ops in the graph traced as fit() traces it: batch and length unknown
            spec = {k: tf.TensorSpec([None, None], tf.int32) for k in inputs}
            graph = tf.function(lambda x: model(x, training=True)).get_concrete_function(spec).graph
            return sum(op.type == "MatMul" for op in graph.get_operations())

        patched = [layer for layer in model._flatten_layers() if "call" in vars(layer)]
        assert len(patched) == 4 * 2  # query, key, value, output in each of the 2 blocks
        with_matmuls = matmuls()
        logits, gradients = logits_and_gradients()
        for layer in patched:
            del layer.call  # Keras's own EinsumDense.call again
        assert with_matmuls - matmuls() == 8
        want_logits, want_gradients = logits_and_gradients()
        np.testing.assert_allclose(logits, want_logits, atol=tolerance * np.abs(want_logits).max())
        for got, want in zip(gradients, want_gradients):
            np.testing.assert_allclose(got, want, atol=tolerance * max(np.abs(want).max(), 1e-6))
