#!/usr/bin/env python
"""Where reduced precision departs from float32: the same weights and the same training
batches, once per precision, compared layer by layer. Writes nothing.

    python eval/precision_check.py --model PATH --data ../shared/data/FinancialPhraseBank-v1.0
    python eval/precision_check.py --model PATH --data ... --precisions bf16,fp16 --batches 1 --batch-size 8
    python eval/precision_check.py --ops     # the two faults at the op level (no model, no data)

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
mixed_bfloat16 as it comes, with TensorFlow's own gradients; "bf16-tf-bias-grad" and
"bf16-keras-dropout" the project's with one repair off (TensorFlow's BiasAdd gradient;
Keras' own dropout draw): docs/precision.md.

--ops measures the two faults the repairs are for, op by op: the bias part of BiasAdd's
gradient in bf16 (TensorFlow's kernel, a plain Sum, the project's float32 sum) against a
float64 sum, and what one Keras Dropout(0.1) layer drops and scales by under each policy,
with Keras' draw and the project's.

The hidden states are the encoder's: the embeddings' output and each block's
(KerasHub's transformer_layer_<i>), through a second functional model over the same
layers, then the classifier's head on its outputs, as models.Classifier calls them.
"""
import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import env  # noqa: E402,F401  (first)
from common import config, distribute, errors  # noqa: E402  (distribute: the repairs it installs)

MODES = ("fp32", "bf16", "bf16-keras", "bf16-tf-bias-grad", "bf16-keras-dropout", "fp16")
POLICY = {"fp32": "float32", "bf16": "mixed_bfloat16", "bf16-keras": "mixed_bfloat16",
          "bf16-tf-bias-grad": "mixed_bfloat16", "bf16-keras-dropout": "mixed_bfloat16", "fp16": "mixed_float16"}
# (float32 bias-gradient sums, float32 dropout draws) in each mode: common/distribute.py's repairs
REPAIRS = {"bf16-keras": (False, False), "bf16-tf-bias-grad": (False, True), "bf16-keras-dropout": (True, False)}


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
    p.add_argument("--ops", action="store_true",
                   help="only the op-level figures of the two faults the repairs are for (no model, no data)")
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
    """'transformer_layer_3/self_attention_layer/value/bias' -> 'self_attention_layer/value/bias'
    (the same parameter in every block); names above the blocks keep their last two parts."""
    m = re.search(r"(?:^|/)transformer_layer_\d+/", name)
    if m:
        return name[m.end():]
    return "/".join(name.split("/")[-2:])


def hidden_states_model(model):
    """(the embeddings' output, each block's output) and the backbone's outputs, from the
    classifier's encoder: a functional model over the same layers (KerasHub backbones
    return the last block's states only)."""
    from common.env import keras
    backbone = model.backbone
    blocks = sorted((layer for layer in backbone.layers if re.fullmatch(r"transformer_layer_\d+", layer.name)),
                    key=lambda layer: int(layer.name.rsplit("_", 1)[1]))
    states = [backbone.get_layer("embeddings_dropout").output] + [layer.output for layer in blocks]
    return keras.Model(backbone.inputs, {"states": states, "outputs": backbone.output})


def forward(model, probe, x, training: bool):
    """(hidden states, float32 logits): models.Classifier.call's path, through the probe."""
    from common import models
    from common.env import tf
    mask = x["attention_mask"]
    res = probe(models.backbone_inputs(model.architecture, x["input_ids"], mask), training=training)
    logits = model.head(models.head_features(res["outputs"], mask), training=training)
    return res["states"], tf.cast(logits, tf.float32)


def build(cfg, labels):
    """The classifier the run's flags describe (--head, --dropout, --freeze), as training builds it."""
    from common import models
    if cfg.head == "custom":
        model = models.build_classifier(cfg.model, labels, cfg.head_dropout, "custom", cfg.pooling,
                                        models.parse_hidden(cfg.head_hidden), cfg.head_activation)
    else:
        model = models.build_classifier(cfg.model, labels, cfg.dropout)
    models.freeze(model, cfg.freeze, cfg.train_embeddings)
    return model


def forward_backward(mode: str, cfg, labels, weights, batches, dropout: bool = False):
    """(hidden states per layer, loss, [gradient per trainable weight]) in float64 NumPy."""
    import numpy as np
    from common import models, training
    from common.env import keras, tf
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(POLICY[mode])
    repaired = (distribute.bf16_bias_grads_in_float32(), distribute.dropout_drawn_in_float32())
    bias_sums, dropout_draws = REPAIRS.get(mode, repaired)
    distribute.accumulate_bf16_bias_grads_in_float32(bias_sums)
    distribute.draw_dropout_in_float32(dropout_draws)
    try:
        # Keras' dropout layers take their seeds when they are made: the same seed before the
        # model is built, the same draws in every precision
        keras.utils.set_random_seed(cfg.seed)
        model = build(cfg, labels)
        model.set_weights(weights)
        probe = hidden_states_model(model)
        loss_fn = training.make_loss(cfg, len(labels))
        # fp16 trains under Keras' dynamic loss scale (compile() adds it): the same here, at its
        # initial scale, or small gradients would underflow where training's do not
        scale = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD()).initial_scale if mode == "fp16" else 1.0
        grads, states, total = None, [], 0.0
        for x, y, w in batches:
            with tf.GradientTape() as tape:
                hidden, logits = forward(model, probe, x, dropout)
                loss = tf.reduce_sum(loss_fn(y, logits) * w) / tf.reduce_sum(w)
                scaled = loss * scale
            g = [tf.zeros(v.shape) if t is None else tf.convert_to_tensor(t) / scale  # None: a part the loss
                 for t, v in zip(tape.gradient(scaled, model.trainable_weights), model.trainable_weights)]  # skips
            grads = g if grads is None else [a + b for a, b in zip(grads, g)]
            states.append([h.numpy().astype(np.float64) for h in hidden] + [logits.numpy().astype(np.float64)])
            total += float(loss)
        return states, total, [t.numpy().astype(np.float64) for t in grads]
    finally:
        distribute.accumulate_bf16_bias_grads_in_float32(repaired[0])
        distribute.draw_dropout_in_float32(repaired[1])
        keras.mixed_precision.set_global_policy(policy)


def relative_error(a, b, reference=None) -> float:
    """|a - b| / |b| (L2), or / |reference| where given."""
    import numpy as np
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b if reference is None else reference), 1e-30))


def first_batches(cfg, n: int):
    """The run's first n training batches (features, labels, loss weights as the loss sees
    them), and the class names."""
    from common import data, models
    from common.env import tf
    from common import sources
    splits = data.load_data(cfg, sources.resolve(cfg), models.load_tokenizer(cfg.model), 1)
    cw = splits.class_weights or {}
    batches = []
    for x, y, *rest in splits.train.take(n):
        w = rest[0] if rest else tf.constant([cw.get(int(c), 1.0) for c in y.numpy()], tf.float32)
        batches.append((x, y, w))
    return batches, splits.labels


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


def bias_sum_errors(rows: int, mean: float = 0.0, width: int = 384, seed: int = 0) -> dict:
    """Relative error of the bias part of BiasAdd's gradient for a [rows, width] bf16
    upstream gradient (values ~ N(mean, 0.01)) against a float64 sum of the same values:
    TensorFlow's BiasAddGrad kernel, a plain Sum (what `x + b` gets), and the gradient
    GradientTape gives in this process (the float32 sum where common/distribute.py's
    repair is installed, as it is on import)."""
    import numpy as np
    from common.env import tf
    g = tf.constant(np.random.default_rng(seed).normal(mean, 0.01, (rows, width)), tf.bfloat16)
    ref = g.numpy().astype(np.float64).sum(0)

    def error(t):
        return relative_error(t.numpy().astype(np.float64), ref)
    bias = tf.zeros([width], tf.bfloat16)
    with tf.GradientTape() as tape:
        tape.watch(bias)
        out = tf.nn.bias_add(tf.zeros_like(g), bias)
    g16 = tf.cast(g, tf.float16)  # float16 for comparison: the kernel accumulates it in float32
    return {"tf_kernel": error(tf.raw_ops.BiasAddGrad(out_backprop=g)), "sum": error(tf.reduce_sum(g, 0)),
            "gradient": error(tape.gradient(out, bias, output_gradients=g)),
            "tf_kernel_float16": relative_error(tf.raw_ops.BiasAddGrad(out_backprop=g16).numpy().astype(np.float64),
                                                g16.numpy().astype(np.float64).sum(0))}


def dropout_draws(policy: str, in_float32: bool = None, rate: float = 0.1, n: int = 1 << 24, seed: int = 1) -> dict:
    """One keras.layers.Dropout(rate) on n ones in training under `policy`: the share it
    drops, the values it keeps (the scale) and the output's mean. in_float32: the
    project's float32 draw (True), Keras' (False), or as installed in this process (None)."""
    import numpy as np
    from common.env import keras, tf
    before, repaired = keras.mixed_precision.global_policy(), distribute.dropout_drawn_in_float32()
    keras.mixed_precision.set_global_policy(policy)
    distribute.draw_dropout_in_float32(repaired if in_float32 is None else in_float32)
    try:
        out = keras.layers.Dropout(rate, seed=seed)(tf.ones([n // 1024, 1024]), training=True)
    finally:
        distribute.draw_dropout_in_float32(repaired)
        keras.mixed_precision.set_global_policy(before)
    y = out.numpy().astype(np.float64)
    return {"dtype": out.dtype.name, "dropped": float((y == 0).mean()),
            "scale": sorted({float(v) for v in np.unique(y[y != 0])}), "mean": float(y.mean())}


def op_tables() -> dict:
    """--ops: both faults at the op level, printed as two tables."""
    report = {"bias_sums": {}, "dropout": {}}
    repaired = distribute.bf16_bias_grads_in_float32()
    print("bias part of BiasAdd's gradient, bf16 [rows, 384], relative error against a float64 sum\n"
          "| rows | TF's BiasAddGrad kernel (values mean 0 / mean 1e-3) | float16, TF's kernel | a Sum (`x + b`) | "
          f"GradientTape's ({'the float32 sum of common/distribute.py' if repaired else 'NOT REPAIRED: TF kernel'}) "
          "|\n|---|---|---|---|---|")
    for rows in (64, 512, 2048, 8192):
        e0, e1 = bias_sum_errors(rows), bias_sum_errors(rows, 1e-3)
        report["bias_sums"][rows] = {"mean 0": e0, "mean 1e-3": e1}
        print(f"| {rows:,} | {e0['tf_kernel']:.4f} / {e1['tf_kernel']:.4f} | {e0['tf_kernel_float16']:.4f} | "
              f"{e0['sum']:.4f} | "
              f"{e0['gradient']:.4f} |")
    print("\nkeras.layers.Dropout(0.1) in training on 16,777,216 ones\n"
          "| policy | draw | dropped | kept values (the scale) | output mean |\n|---|---|---|---|---|")
    for policy in ("float32", "mixed_bfloat16", "mixed_float16"):
        for in_float32 in ((False,) if policy == "float32" else (False, True)):
            d = dropout_draws(policy, in_float32)
            draw = "float32 (common/distribute.py)" if in_float32 else "Keras'"
            report["dropout"][f"{policy}, {draw}"] = d
            print(f"| {policy} | {draw} | {d['dropped']:.4%} | {', '.join(f'{v:.6g}' for v in d['scale'])} | "
                  f"{d['mean']:.5f} |")
    return report


def main(argv=None):
    args = parse(argv)
    if args.ops:
        report = op_tables()
        if args.json:
            print(json.dumps(report))
        return report
    from common import models, optim
    from common.env import keras, tf
    cfg = config.from_args(args)
    # data: the run's first training batches, with their class weights as the loss sees them
    batches, labels = first_batches(cfg, args.batches)
    tokens = sum(int(tf.size(x["input_ids"])) for x, _, _ in batches)
    print(f"{len(batches)} batch(es) of {cfg.batch_size}, {tokens} token positions, widths "
          f"{[int(x['input_ids'].shape[1]) for x, _, _ in batches]}, dropout {'on' if args.training else 'off'}")
    # model: the float32 weights every precision starts from
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(cfg.seed)
    reference = build(cfg, labels)
    weights = reference.get_weights()
    groups, n_blocks = optim.variable_groups(reference, models.encoder_of(reference))
    names = [(v.path, g) for v, g in groups]  # model.trainable_weights' order, as the gradients
    del reference
    group_name = (["embeddings"] + [f"block {i}" for i in range(n_blocks)] + ["head"]).__getitem__
    # one pass per precision
    ref_states, ref_loss, ref_grads = forward_backward("fp32", cfg, labels, weights, batches, args.training)
    report = {"batches": len(batches), "tokens": tokens, "loss": {"fp32": ref_loss}, "precisions": {}}
    for mode in args.precisions:
        states, loss, grads = forward_backward(mode, cfg, labels, weights, batches, args.training)
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
