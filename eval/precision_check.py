#!/usr/bin/env python
"""Where reduced precision departs from float32: the same weights and the same training
batches, once per precision, compared layer by layer. Writes nothing.

    python eval/precision_check.py --model PATH --data ../shared/data/FinancialPhraseBank-v1.0
    python eval/precision_check.py --model PATH --data ... --precisions bf16,fp16 --batches 1 --batch-size 8

For each precision it builds the classifier under that Keras policy, loads the float32
model's initial weights, and runs the run's first training batches (the project's
pipeline, loss and class weights) through one forward and backward pass: with dropout off
(only the arithmetic differs), or with --training, dropout on and the same seed in every
precision (the masks differ only if a precision draws them differently). Against float32
it prints, per layer, the relative error of the hidden states, and per variable group
(embeddings, block i, head) and kind (kernel, bias, LayerNorm), the relative error of the
gradient and the share of elements whose gradient sign differs (AdamW's first update is
lr * sign(g)). "bf16" and "fp16" are the project's (common/distribute.py: dropout drawn
in float32, bf16 BiasAdd gradients summed in float32); "bf16-keras" is Keras'
mixed_bfloat16 as it comes, with TensorFlow's own gradients: docs/precision.md.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import env  # noqa: E402,F401  (first)
from common import config, distribute, errors  # noqa: E402  (distribute: the repairs it installs)

MODES = ("fp32", "bf16", "bf16-keras", "fp16")
POLICY = {"fp32": "float32", "bf16": "mixed_bfloat16", "bf16-keras": "mixed_bfloat16", "fp16": "mixed_float16"}


def parse(argv=None):
    p = config.build_parser(__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--precisions", default="bf16,bf16-keras",
                   help=f"comma-separated, each compared with fp32; of {', '.join(MODES[1:])} (fp16 has no fast "
                        f"CPU kernels: use --batches 1 --batch-size 8 there)")
    p.add_argument("--batches", type=int, default=2, help="training batches summed into one gradient")
    p.add_argument("--training", action="store_true",
                   help="dropout on, the same seed in every precision (default: off, the arithmetic alone)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON line too")
    args = p.parse_args(argv)
    args.precisions = [x.strip() for x in args.precisions.split(",") if x.strip()]
    bad = [x for x in args.precisions if x not in MODES[1:]]
    if bad:
        raise errors.FlagError(f"--precisions {','.join(bad)}: expected some of {', '.join(MODES[1:])}")
    return args


def kind_of(name: str) -> str:
    low = name.lower()
    if "layernorm" in low or "layer_norm" in low:
        return "LayerNorm"
    return "bias" if "bias" in low else ("kernel" if "kernel" in low else "embeddings")


def parameter_of(name: str) -> str:
    """'.../layer_._3/attention/self/query/kernel:0' -> 'attention/self/query/kernel' (the
    same parameter in every block); names above the blocks keep their last two parts."""
    name = name.split(":")[0]
    if "/layer_._" in name:
        return name.split("/layer_._", 1)[1].split("/", 1)[1]
    return "/".join(name.split("/")[-2:])


def forward_backward(mode: str, cfg, weights, batches, dropout: bool = False):
    """(hidden states per layer, loss, [gradient per trainable weight]) in float64 NumPy."""
    import numpy as np
    from common import models, training
    from common.env import keras, tf
    from tensorflow.python.framework import ops
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(POLICY[mode])
    entries = [ops._gradient_registry._registry[t] for t in ("BiasAdd", "BiasAddV1")]
    fixed, dropout_call = [e["type"] for e in entries], keras.layers.Dropout.call
    if mode == "bf16-keras":  # TensorFlow's and Keras' own, as before common/distribute.py's repairs
        from tensorflow.python.ops import nn_grad
        entries[0]["type"], entries[1]["type"] = nn_grad._BiasAddGrad, nn_grad._BiasAddGradV1
        keras.layers.Dropout.call = distribute.KERAS_DROPOUT_CALL
    try:
        model = models.build_classifier(cfg.model)
        models.freeze(model, cfg.freeze, cfg.train_embeddings)
        model.set_weights(weights)
        tf.keras.utils.set_random_seed(cfg.seed)  # the same dropout draws in every precision
        loss_fn = training.make_loss(cfg)
        # fp16 trains under Keras' dynamic loss scale (compile() adds it): the same here, at its
        # initial scale, or small gradients would underflow where training's do not
        scaler = keras.mixed_precision.LossScaleOptimizer(keras.optimizers.SGD()) if mode == "fp16" else None
        grads, states, total = None, [], 0.0
        for x, y, w in batches:
            with tf.GradientTape() as tape:
                out = model(x, training=dropout, output_hidden_states=True)
                loss = tf.reduce_sum(loss_fn(y, out.logits) * w) / tf.reduce_sum(w)
                scaled = scaler.get_scaled_loss(loss) if scaler else loss
            g = tape.gradient(scaled, model.trainable_weights)
            g = [tf.convert_to_tensor(t) for t in (scaler.get_unscaled_gradients(g) if scaler else g)]
            grads = g if grads is None else [a + b for a, b in zip(grads, g)]
            states.append([h.numpy().astype(np.float64) for h in out.hidden_states] + [out.logits.numpy()])
            total += float(loss)
        return states, total, [t.numpy().astype(np.float64) for t in grads]
    finally:
        for e, f in zip(entries, fixed):
            e["type"] = f
        keras.layers.Dropout.call = dropout_call
        keras.mixed_precision.set_global_policy(policy)


def relative_error(a, b, reference=None) -> float:
    """|a - b| / |b| (L2), or / |reference| where given."""
    import numpy as np
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b if reference is None else reference), 1e-30))


def first_batches(cfg, n: int):
    """The run's first n training batches (features, labels, loss weights as the loss sees them)."""
    from common import data, models
    from common.env import tf
    splits = data.load_data(cfg, models.load_tokenizer(cfg.model), 1)
    cw = splits.class_weights or {}
    batches = []
    for x, y, *rest in splits.train.take(n):
        w = rest[0] if rest else tf.constant([cw.get(int(c), 1.0) for c in y.numpy()], tf.float32)
        batches.append((x, y, w))
    return batches


def compare(names, group_name, states, grads, ref_states, ref_grads) -> dict:
    """One precision against fp32: hidden states per layer; gradients per (group, kind) and per parameter."""
    import numpy as np
    layers = [relative_error(np.concatenate([s[i].ravel() for s in states]),
                             np.concatenate([s[i].ravel() for s in ref_states])) for i in range(len(states[0]))]
    table, by_parameter = {}, {}
    for (name, group), g, ref in zip(names, grads, ref_grads):
        d = table.setdefault((group_name(group), kind_of(name)), {"diff": [], "ref": [], "flips": 0, "n": 0})
        d["diff"].append((g - ref).ravel())
        d["ref"].append(ref.ravel())
        d["flips"] += int((np.sign(g) != np.sign(ref)).sum())
        d["n"] += g.size
        p = by_parameter.setdefault(parameter_of(name), {"diff": [], "ref": []})
        p["diff"].append((g - ref).ravel())
        p["ref"].append(ref.ravel())
    norms = {k: np.linalg.norm(np.concatenate(d["ref"])) for k, d in by_parameter.items()}
    # a parameter float32 gives (almost) no gradient has no relative error: the attention
    # key's bias (softmax ignores a shift shared by a query's scores)
    parameters = {k: relative_error(np.concatenate(d["diff"]), 0, np.concatenate(d["ref"]))
                  for k, d in by_parameter.items() if norms[k] > 1e-4 * np.median(list(norms.values()))}
    rows = [{"group": grp, "kind": kind,
             "grad_rel_error": relative_error(np.concatenate(d["diff"]), 0, np.concatenate(d["ref"])),
             "sign_flips": d["flips"] / d["n"]} for (grp, kind), d in table.items()]
    return {"hidden_rel_error": layers, "gradients": rows, "by_parameter": parameters}


def main(argv=None):
    args = parse(argv)
    from common import models, optim
    from common.env import keras, tf
    cfg = config.from_args(args)
    # data: the run's first training batches, with their class weights as the loss sees them
    batches = first_batches(cfg, args.batches)
    tokens = sum(int(tf.size(x["input_ids"])) for x, _, _ in batches)
    print(f"{len(batches)} batch(es) of {cfg.batch_size}, {tokens} token positions, widths "
          f"{[int(x['input_ids'].shape[1]) for x, _, _ in batches]}, dropout {'on' if args.training else 'off'}")
    # model: the float32 weights every precision starts from
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    tf.keras.utils.set_random_seed(cfg.seed)
    reference = models.build_classifier(cfg.model)
    models.freeze(reference, cfg.freeze, cfg.train_embeddings)
    weights = reference.get_weights()
    groups, n_blocks = optim.variable_groups(reference, models.encoder_of(reference))
    names = [(v.name, g) for v, g in groups]  # model.trainable_weights' order, as the gradients
    del reference
    group_name = (["embeddings"] + [f"block {i}" for i in range(n_blocks)] + ["head"]).__getitem__
    # one pass per precision
    ref_states, ref_loss, ref_grads = forward_backward("fp32", cfg, weights, batches, args.training)
    report = {"batches": len(batches), "tokens": tokens, "loss": {"fp32": ref_loss}, "precisions": {}}
    for mode in args.precisions:
        states, loss, grads = forward_backward(mode, cfg, weights, batches, args.training)
        result = report["precisions"][mode] = compare(names, group_name, states, grads, ref_states, ref_grads)
        report["loss"][mode] = loss
        print(f"\n## {mode} vs fp32: loss {loss:.6f} vs {ref_loss:.6f}")
        print("hidden states, relative error per layer (embeddings output, blocks, logits): "
              + " ".join(f"{e:.4f}" for e in result["hidden_rel_error"]))
        print("| group | kind | gradient relative error | gradient sign differs |\n|---|---|---|---|")
        for r in result["gradients"]:
            print(f"| {r['group']} | {r['kind']} | {r['grad_rel_error']:.4f} | {r['sign_flips']:.3%} |")
        print("gradient relative error per parameter, over all blocks: "
              + ", ".join(f"{k} {v:.4f}" for k, v in result["by_parameter"].items()))
    keras.mixed_precision.set_global_policy(policy)
    if args.json:
        print(json.dumps(report))
    return report


if __name__ == "__main__":
    errors.run(main)
