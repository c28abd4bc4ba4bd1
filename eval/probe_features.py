#!/usr/bin/env python
"""What a head-only run can learn from a frozen encoder: each sentence feature a head could
read, measured before any training (the notebook's Basic 1, explained).

    python eval/probe_features.py --model PATH --data ../shared/data/FinancialPhraseBank-v1.0

For three features of the frozen pretrained encoder:
  pooler  - what the library head (models.ClassificationHead, kind library) reads: BERT's
            pooler, tanh(W h_[CLS] + b) (KerasHub's pooled_output); DistilBERT, which has
            none: h_[CLS]
  cls     - the last hidden state of the first token
  mean    - the mean of the last hidden states over real tokens (what sentence-transformers
            models such as all-MiniLM-L6-v2 were trained to make useful; --pooling mean)
it prints how much the feature varies between sentences (mean cosine similarity of two
sentences' features; per-dimension std across sentences relative to its mean magnitude; for
the pooler the share of saturated tanh units) and how well a linear classifier can read the
label from it: scikit-learn's logistic regression (balanced class weights, standardised
features) fitted on the training split and scored on the test split. A feature a linear
probe reads well but a head-only run does not learn points at the optimisation (rate, epochs,
class weights); a feature no probe reads points at the feature. Writes nothing.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import env  # noqa: E402,F401  (first)
from common import config, data, errors, phrasebank  # noqa: E402


def features(model, tokenizer, sentences, max_length=128, batch_size=64):
    """{name: [n, dim] float32} of the frozen encoder, in sentence order."""
    import numpy as np
    from common import models
    from common.env import tf
    backbone = models.encoder_of(model)  # KerasHub: DistilBERT returns the sequence, BERT a dict
    ids = data.encode(tokenizer, sentences, max_length)
    out = {}
    for idx, x in data.length_batches(ids, batch_size, max_length, tokenizer.pad_token_id):
        mask = tf.constant(x["attention_mask"], tf.int32)
        feed = models.backbone_inputs(model.architecture, tf.constant(x["input_ids"], tf.int32), mask)
        f = models.head_features(backbone(feed, training=False), mask)
        pooled = f.get("pooled")
        h = np.asarray(f["sequence"], np.float32)
        mask = x["attention_mask"][..., None]
        batch = {"pooler": h[:, 0] if pooled is None else np.asarray(pooled, np.float32), "cls": h[:, 0],
                 "mean": (h * mask).sum(1) / mask.sum(1)}
        for name, value in batch.items():  # back into sentence order
            out.setdefault(name, np.zeros([len(ids), value.shape[1]], np.float32))[idx] = value
    return out


def describe(train_x, y_train, test_x, y_test) -> dict:
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    unit = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    cos = unit @ unit.T
    n = len(unit)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, class_weight="balanced"))
    probe.fit(train_x, y_train)
    pred = probe.predict(test_x)
    return {"mean_cosine": float((cos.sum() - n) / (n * (n - 1))),
            "relative_std": float(train_x.std(0).mean() / np.abs(train_x).mean()),
            "saturated": float((np.abs(train_x) > 0.99).mean()),
            "probe_accuracy": float(accuracy_score(y_test, pred)),
            "probe_macro_f1": float(f1_score(y_test, pred, average="macro")),
            "predicted_classes": int(len(set(pred.tolist())))}


def main(argv=None):
    p = config.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="distilbert-base-uncased", help="Hub id or local folder, as for the train scripts")
    p.add_argument("--data", default="hub")
    p.add_argument("--agreement", default="all", choices=phrasebank.LEVEL_CHOICES)
    p.add_argument("--split", default="hash", choices=["hash", "notebook", "seed"])
    args = p.parse_args(argv)
    import numpy as np
    from common import models
    splits = phrasebank.load_splits(args.data, args.agreement, args.split)
    tokenizer = models.load_tokenizer(args.model)
    model = models.build_classifier(args.model, phrasebank.LABELS)  # (the head is not used: the encoder is)
    feats = {part: features(model, tokenizer, [s for s, _ in splits[part]]) for part in ("train", "test")}
    y = {part: np.array([l for _, l in splits[part]]) for part in ("train", "test")}
    majority = max(np.bincount(y["test"])) / len(y["test"])
    lines = [f"# Frozen-encoder features: `{args.model}`, {phrasebank.level_name(args.agreement)}, --split {args.split} "
             f"(probe fitted on {len(y['train'])} training sentences, scored on {len(y['test'])} test sentences; "
             f"predicting the majority class scores accuracy {majority:.4f})", "",
             "| feature | dims | mean cosine of two sentences | per-dim std / mean abs | saturated (abs > 0.99) "
             "| linear probe test accuracy | macro-F1 | classes predicted |", "|---|---|---|---|---|---|---|---|"]
    results = {}
    for name in ("pooler", "cls", "mean"):
        r = results[name] = describe(feats["train"][name], y["train"], feats["test"][name], y["test"])
        lines.append(f"| {name} | {feats['train'][name].shape[1]} | {r['mean_cosine']:.4f} | {r['relative_std']:.3f} | "
                     f"{r['saturated']:.3f} | {r['probe_accuracy']:.4f} | {r['probe_macro_f1']:.4f} | "
                     f"{r['predicted_classes']} |")
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    errors.run(main)
