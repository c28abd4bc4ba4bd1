"""--xla on: the forward pass, the loss and the gradients of each replica in one
XLA-compiled function; gradient aggregation and the optimizer update outside it.

Why not compile(jit_compile=True): Keras 3 then compiles its whole train step, which
runs strategy.run inside one XLA function; under MirroredStrategy that fails on TF 2.21
("Trying to access resource .../replica_1 located in device CPU:1 from device CPU:0",
XLA's known issue with variables on other devices; checked on the tiny DistilBERT over
two CPU replicas), as it did on TF 2.15 (tensorflow issues 53140, 56423: cross-replica
all-reduces, metric updates on mirrored variables and sparse embedding gradients inside
the step), and Keras 3's jit_compile="auto" leaves XLA off under any tf.distribute
strategy. Compiling only the per-replica maths, as the Model Garden does for multi-worker
(its pull request 10845), leaves all of those outside, so one code path runs on one
device, N GPUs and N workers. Keras has no such mode, hence this file.

The step mirrors Keras 3's own TensorFlow train_step
(keras/src/backend/tensorflow/trainer.py), with the maths moved into the compiled
function: the loss inside is Keras' reduction written out (the per-example loss times
the sample (class) weight, summed, over the examples of the GLOBAL batch, plus
model.losses as Keras adds them), scaled by `optimizer.scale_loss` (a
LossScaleOptimizer's dynamic scale under mixed_float16, the loss itself otherwise); the
gradients go to `optimizer.apply_gradients` outside, which all-reduces them across
replicas and, under mixed_float16, unscales them and skips the step if they are not
finite on any replica (optim.LossScaleOptimizer). The loss and metrics Keras reports are computed from the same logits
outside (cheap), through Keras' own compute_loss, loss tracker and compute_metrics, so
`fit()` logs what it logs without --xla.

Compilations: XLA compiles once per input shape (Keras traces the step with open shapes,
so the compiled function's cache is keyed on the concrete shapes it is fed at run time).
Batches are bucketed to fixed widths, and a width's one part-filled batch per epoch is
padded here to the full per-replica batch (rows of weight 0), so a run compiles at most
once per width and replica; `xla_compilations` counts the distinct (replica, shape)
pairs really fed to the compiled function.
"""
import threading

from common.env import keras, tf


def compiled_gradients_train_step(model, loss_fn, local_batch: int):
    """A train_step for `model` (compiled already) with the per-replica maths under XLA.
    Each replica's batch is padded to `local_batch` rows (weight 0), so part-filled batches
    reuse their width's compilation. Attaches model.xla_compilations().

    Assign the result to model.train_step: Keras 3's make_train_function reads
    self.train_step, so an instance attribute replaces the class's step."""
    from keras.src.losses import loss as keras_loss  # Keras' own per-replica loss unscaling, for the report

    seen = set()
    lock = threading.Lock()
    with_gradient = []  # indices of the variables the loss reaches (known once traced)

    def record(replica, shape):  # host-side, once per step and replica: a set insert
        with lock:
            seen.add((int(replica), tuple(int(d) for d in shape)))
        return shape

    @tf.function(jit_compile=True, autograph=False)
    def loss_and_gradients(x, y, sample_weight, global_examples):
        variables = model.trainable_variables
        with tf.GradientTape() as tape:
            logits = tf.cast(model(x, training=True), tf.float32)
            per_example = tf.reshape(loss_fn(y, logits), [-1]) * sample_weight
            # Keras' reduction (sum of weighted losses over the batch's examples), over the
            # GLOBAL batch: the all-reduce that sums the replicas' gradients then gives the
            # gradient of the global mean, also when a part-filled batch splits unevenly
            # (Keras' own step divides by the local batch and the replica count).
            loss = tf.reduce_sum(per_example) / global_examples
            for extra in model.losses:  # as Keras 3's compute_loss adds them: summed, unscaled
                loss += tf.reduce_sum(tf.cast(extra, tf.float32))
            objective = model.optimizer.scale_loss(loss)  # LossScaleOptimizer: times its dynamic scale
        grads = tape.gradient(objective, variables)
        # Variables the loss does not reach get no update at all, as in Keras' own step (no
        # zero gradient, which AdamW's weight decay would still act on); dense gradients out
        # of the compiled function (IndexedSlices cannot leave it).
        with_gradient[:] = [i for i, g in enumerate(grads) if g is not None]
        return logits, [tf.convert_to_tensor(grads[i]) for i in with_gradient]

    def train_step(data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        n = tf.shape(y)[0]
        weights = tf.ones([n], tf.float32) if sample_weight is None else tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
        ctx = tf.distribute.get_replica_context()
        global_examples = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(n, tf.float32))
        extra = tf.maximum(local_batch - n, 0)  # pad rows: zeros, no attention, weight 0
        padded_x = {k: tf.pad(v, [[0, extra], [0, 0]]) for k, v in x.items()}
        padded_y = tf.pad(tf.reshape(tf.cast(y, tf.int32), [-1]), [[0, extra]])
        padded_w = tf.pad(weights, [[0, extra]])
        shape = tf.numpy_function(record, [ctx.replica_id_in_sync_group, tf.shape(padded_x["input_ids"])], tf.int32,
                                  stateful=True)
        with tf.control_dependencies([shape]):
            logits, grads = loss_and_gradients(padded_x, padded_y, padded_w, global_examples)
        logits = logits[:n]
        variables = model.trainable_variables
        # all-reduce, then (LossScaleOptimizer) unscale, finiteness check and update: Keras'
        model.optimizer.apply_gradients(zip(grads, [variables[i] for i in with_gradient]))
        # the reported "loss", exactly as Keras 3's train_step reports it
        reported = model._compute_loss(x=x, y=y, y_pred=logits, sample_weight=sample_weight, training=True)
        model._loss_tracker.update_state(keras_loss.unscale_loss_for_distribution(reported), sample_weight=n)
        return model.compute_metrics(x, y, logits, sample_weight=sample_weight)

    model.xla_compilations = lambda: len(seen)
    return train_step
