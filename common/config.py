"""One flag vocabulary for every script: a dataclass, its argparse parser, its JSON form.

Every knob lives here, visible in one place (as in nanoGPT's train.py). A script may
change defaults (head-only training wants a larger learning rate) but not meanings.
"""
import argparse
import dataclasses
import re
from dataclasses import dataclass, field

from common.phrasebank import LEVEL_CHOICES, LEVELS
from common.recipes import RECIPES

# --select-metric's choices, and which way is better for each
SELECT_MODE = {"macro_f1": "max", "accuracy": "max", "loss": "min"}


def _f(default, help, **kw):
    return field(default=default, metadata=dict(help=help, **kw))


def license_id(value: str) -> str:
    """--license: an id, as the Hub's model card metadata takes one (license, or license_name
    beside license: other, "an id ... like my-license-1.0"); '' is none given."""
    if value and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}", value):
        raise argparse.ArgumentTypeError(f"{value!r}: give a license id (letters, digits, '.', '-', '_', '+'): one "
                                         f"the Hub knows, such as cc-by-4.0 or apache-2.0, or your own, such as "
                                         f"my-license-1.0")
    return value


@dataclass
class Config:
    recipe: str = _f("project", "a named preset of the flags below (common/recipes.py): project (these defaults), "
                     "notebook (the notebook's: pad 512, batch 8, fp32, Adam 5e-5 PolynomialDecay over 10000 steps), "
                     "hf (the HF example's); flags given on the command line override it",
                     choices=["project", "notebook", "hf"])
    # data
    data: str = _f("hub", "Financial PhraseBank: a release folder, the release zip, or 'hub' (download "
                   "takala/financial_phrasebank from the Hugging Face Hub, cached); or your own labelled data: a "
                   "CSV / TSV / JSONL file, or a folder with train / validation / test files (docs/own-data.md)")
    text_column: str = _f("", "own data: the column / field with the text (default: text, sentence or headline, "
                          "or the only column)")
    label_column: str = _f("label", "own data: the column / field with each row's label")
    labels: str = _f("negative,neutral,positive", "the class names, comma-separated, in id order (the PhraseBank's "
                     "by default); own data may name any two or more")
    label_map: str = _f("", "own data: RAW=NAME,... maps the file's label values onto --labels (default: the values "
                        "are those names)")
    split_seed: int = _f(42, "own data given as one file: seed of its stratified 80/10/10 split into train, "
                         "validation and test (not --seed: the test set stays put across seeds)")
    agreement: str = _f("all", "annotator agreement level to train on", choices=list(LEVEL_CHOICES))
    split: str = _f("hash", "'hash': leak-free, nested across levels; 'notebook': the notebook's own split "
                    "(datasets' train_test_split 0.2 then 0.5, seed 42; duplicates kept); 'seed': the same sizes by "
                    "scikit-learn (other sentences; for older runs)", choices=["hash", "notebook", "seed"])
    max_length: int = _f(128, "truncate sentences to this many tokens (the longest has 150 with BERT's vocab)")
    padding: str = _f("buckets", "'buckets': pad each batch of similar lengths to the next of a few widths; "
                      "'fixed': pad every sentence to --max-length (the notebook's way, for comparison); "
                      "'longest': fixed's batches, each padded only to its longest sentence's width (trains "
                      "as 'fixed' does, the mask hides padding; e.g. --recipe notebook --padding longest)",
                      choices=["buckets", "fixed", "longest"])
    # model
    model: str = _f("distilbert-base-uncased", "Hugging Face Hub id or local folder of a DistilBERT or BERT "
                    "encoder (config.json, model.safetensors, vocab.txt, tokenizer_config.json), converted by "
                    "KerasHub; or a run's model/ folder")
    init_from: str = _f("", "start from the weights of this earlier run folder (runs/<name>)")
    dropout: float = _f(-1.0, "classifier dropout; -1 keeps the model config's value (DistilBERT "
                        "seq_classif_dropout, BERT classifier_dropout or hidden_dropout_prob; 0.2 / 0.1 if unset)")
    freeze: str = _f("none", "which part does not train: none, encoder (head only), head (encoder only)",
                     choices=["none", "encoder", "head"])
    train_embeddings: bool = _f(False, "train the embedding layer too. Off by default: on MiniLM it is half of "
                                "the weights, and skipping its optimizer update cuts each training step by about a third "
                                "at the same test accuracy (docs/performance.md)")
    head: str = _f("library", "'library': the model's own head; 'custom': --pooling/--head-* below",
                   choices=["library", "custom"])
    pooling: str = _f("cls", "custom head: pool the first token or the mean of real tokens",
                      choices=["cls", "mean"])
    head_hidden: str = _f("256", "custom head: hidden Dense sizes, comma-separated ('' for none)")
    head_dropout: float = _f(0.1, "custom head: dropout before each Dense")
    head_activation: str = _f("gelu", "custom head: activation of the hidden layers")
    # optimisation
    epochs: int = _f(3, "passes over the training split")
    batch_size: int = _f(16, "examples per step over all replicas (global batch; each replica gets "
                         "batch-size / replicas), so results do not depend on the device count. 16: twice the "
                         "optimizer steps of 32, better on the own-data benchmark's files (docs/own-data.md)")
    lr: float = _f(1e-4, "peak learning rate (AdamW), reached after warm-up, then linear decay to 0")
    lr_schedule: str = _f("linear", "'linear': warm-up, then linear decay to 0; 'constant': --lr throughout "
                          "(the notebook's Adam)", choices=["linear", "constant"])
    warmup: float = _f(0.1, "share of all steps spent warming the learning rate up from 0")
    decay_steps: int = _f(0, "linear decay to 0 over this many steps after warm-up, then 0 (0: over the rest of the "
                          "run); the notebook's PolynomialDecay used 10000, almost constant over its 681 steps")
    adam_epsilon: float = _f(1e-6, "Adam's epsilon (Keras' Adam default is 1e-7; BERT's 1e-6)")
    weight_decay: float = _f(0.01, "AdamW decoupled weight decay (not on biases and LayerNorm)")
    clipnorm: float = _f(1.0, "clip gradients to this global norm; 0 disables")
    layer_lr_decay: float = _f(0.9, "layer-wise learning-rate decay: block i trains at lr * decay^(depth - i); "
                               "1 = one rate for all (0.9: as accurate or more on each of 5 seeds, docs/results.md)")
    head_warmup_epochs: int = _f(0, "gradual unfreezing: train only the head for this many epochs")
    unfreeze_every: int = _f(0, "gradual unfreezing: then one more block from the top every N epochs "
                             "(ULMFiT); 0 = all at once")
    train_examples: float = _f(0, "train on a class-stratified, seeded subset of the training split: N >= 1 "
                               "sentences or a share < 1 (validation and test stay whole); 0 = all")
    extra_agreement: str = _f("none", "agreement-aware training: also train on the sentences this looser level adds "
                              "to --agreement's training split (hash split: they are in no level's validation or test "
                              "split); validation and test stay --agreement's", choices=["none", *LEVELS[1:]])
    extra_weight: float = _f(0.5, "--extra-agreement: loss weight of the added sentences (1 = as much as "
                             "--agreement's own; fewer annotators agreed on them)")
    label_smoothing: float = _f(0.0, "move this share of each target's probability to the other classes "
                                "(Keras' label_smoothing); 0 = off")
    ema: float = _f(0.0, "keep an exponential moving average of the weights with this momentum (Keras optimizers' "
                    "use_ema, e.g. 0.98) and evaluate and export it at the end instead of the best epoch; 0 = off")
    train_top_blocks: int = _f(-1, "only the top N transformer blocks (and the head) ever train; -1 = all")
    class_weight: str = _f("sqrt", "weight the loss by class: 'balanced' = sklearn's compute_class_weight; "
                           "'sqrt' (the default) = their square roots, mean weight per example 1: the rare "
                           "classes are still learned (without weights some seeds never learned the rare "
                           "negatives in 3 epochs, docs/performance.md), at less cost than 'balanced' on noisy "
                           "data (docs/own-data.md)",
                           choices=["none", "sqrt", "balanced"])
    restore_prior: str = _f("auto", "after training with class weights, subtract log(class weight) from the "
                            "logits' bias, so predictions follow the training data's class frequencies again "
                            "(post-hoc logit adjustment). 'auto': only where that raises --select-metric on the "
                            "validation split (the decision and both figures go to the log and metrics.json); "
                            "'on' (or bare --restore-prior): always; 'off' (--no-restore-prior): keep the weighted "
                            "model (docs/own-data.md). Not with --freeze head: a frozen head stays as it was",
                            choices=["auto", "on", "off"], nargs="?", const="on", negative="off")
    loss: str = _f("ce", "'ce' cross-entropy, 'focal' Keras' categorical focal cross-entropy",
                   choices=["ce", "focal"])
    select_metric: str = _f("macro_f1", "the validation figure every choice is made on: the best epoch kept, "
                            "--restore-prior auto, --patience, the tuners' objective", choices=list(SELECT_MODE))
    eval_every: int = _f(0, "validate every N optimizer steps instead of once per epoch: the best checkpoint, "
                         "--patience, TensorBoard's epoch figures, epochs.json and the backups then follow these "
                         "points; 0 = once per epoch")
    patience: int = _f(0, "stop once --select-metric on validation has not improved for this many validations (epochs, "
                       "or --eval-every points); the best one is kept, --epochs is the ceiling, and the learning-rate "
                       "schedule is laid out over it; 0 = train to the ceiling")
    # hardware
    precision: str = _f("auto", "auto = fp16 on GPU, bf16 on CPUs with bf16 units, else fp32",
                        choices=["auto", "fp32", "fp16", "bf16"])
    xla: str = _f("off", "XLA: 'on' (or bare --xla) compiles each replica's forward pass, loss and gradients; "
                  "'auto' turns on TensorFlow's auto-clustering; works on every strategy (docs/scaling.md)",
                  choices=["off", "on", "auto"], nargs="?", const="on")
    gpus: int = _f(0, "MirroredStrategy over the first N GPUs (0: no GPU strategy)")
    cpu_replicas: int = _f(0, "split the CPU into N logical devices and mirror over them (tests, laptops)")
    # run
    run_dir: str = _f("", "run folder; default runs/<script>-<time>. Rerunning with the same folder resumes")
    backup_every_steps: int = _f(0, "save resumable state every N steps (0: every epoch)")
    seed: int = _f(42, "seed for weights init, shuffling and dropout")
    deterministic: bool = _f(False, "make TF ops deterministic (slower)")
    log_every_steps: int = _f(0, "also log loss and learning rate to TensorBoard every N steps (0: per epoch only)")
    tb_staging: str = _f("", "write TensorBoard's event files in this local folder and copy them into the run "
                             "folder's tb/ every --tb-copy-every seconds, every backup and epoch: for a run folder on "
                             "a bucket mount, which uploads a file only once it is closed (the launchers set it; "
                             "docs/cloud.md#tensorboard-on-a-bucket-mount)")
    tb_copy_every: int = _f(60, "seconds between --tb-staging copies")
    license: str = _f("", "own data: the license the model card states (a Hub license id such as cc-by-4.0, or an "
                      "id of your own such as my-license-1.0); a PhraseBank model's is the PhraseBank's, "
                      "CC BY-NC-SA 3.0 (docs/using-the-model.md)", parse=license_id)
    serving: bool = _f(True, "write serving/ when the run finishes: the SavedModel that takes raw strings "
                       "(docs/using-the-model.md). --no-serving for runs you will not serve (sweeps; the study scripts "
                       "pass it to their runs): a few seconds each; eval/export.py writes it later")

    def __post_init__(self):
        if isinstance(self.restore_prior, bool):  # config.json of a run made when it was an on/off flag
            self.restore_prior = "on" if self.restore_prior else "off"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown beside each flag, and the description's examples kept line by line."""


def sets_flag(token: str, flag: str) -> bool:
    """Whether a command-line word sets `flag`: whole, as --flag=VALUE, or shortened, as
    argparse takes any unambiguous prefix (--mod for --model). For scripts that pass a user's
    flags on to a train script and set some flags themselves."""
    name = token.split("=", 1)[0]
    return len(name) > 2 and name.startswith("--") and flag.startswith(name)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a bad flag reported on one line (the flag, the fix) instead of the usage
    block; and --recipe: its preset becomes the defaults, so flags on the command line win."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        ns, rest = super().parse_known_args(args, namespace)
        preset = RECIPES.get(getattr(ns, "recipe", None) or "", {})
        if preset:  # parse again over the recipe's defaults (argparse's way of "given beats default")
            self.set_defaults(**preset)
            ns, rest = super().parse_known_args(args, namespace)
        return ns, rest


def build_parser(description: str, **defaults) -> argparse.ArgumentParser:
    """argparse parser with every Config field as --flag-name; `defaults` override per script."""
    p = ArgumentParser(description=description, formatter_class=HelpFormatter)
    for f in dataclasses.fields(Config):
        default = defaults.pop(f.name, f.default)
        flag = "--" + f.name.replace("_", "-")
        meta = dict(f.metadata)
        if f.type in (bool, "bool"):
            p.add_argument(flag, default=default, action=argparse.BooleanOptionalAction, help=meta["help"])
        else:
            typ = meta.get("parse") or {"int": int, "float": float, "str": str}.get(f.type, f.type)
            extra = {k: meta[k] for k in ("nargs", "const") if k in meta}
            p.add_argument(flag, default=default, type=typ, help=meta["help"], choices=meta.get("choices"), **extra)
            if "negative" in meta:  # --no-FLAG, as BooleanOptionalAction would give an on/off flag
                p.add_argument("--no-" + flag[2:], dest=f.name, action="store_const", const=meta["negative"],
                               help=f"same as {flag} {meta['negative']}")
    if defaults:
        raise TypeError(f"unknown config fields: {sorted(defaults)}")
    return p


def from_args(ns: argparse.Namespace) -> Config:
    return Config.from_dict(vars(ns))


def passthrough_flags(argv, drop=()) -> list:
    """The Config flags in argv (as given), without those in `drop`: to hand a script's
    shared flags on to another script."""
    names = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(Config)}
    names |= {"--no-" + n[2:] for n in names}
    out, i = [], 0
    while i < len(argv):
        flag = argv[i].split("=", 1)[0]
        takes_value = "=" not in argv[i] and i + 1 < len(argv) and not argv[i + 1].startswith("--")
        if flag in names and flag not in drop:
            out += argv[i:i + 1 + takes_value]
        i += 1 + takes_value
    return out
