"""The model card: README.md in a finished run folder, in the Hugging Face Hub's format.

YAML front matter (license, base model, datasets, language, pipeline tag, tags, the test
figures as model-index results; written by huggingface_hub's ModelCardData), then what the
model does, its training data and the license that follows from it, the command that
reproduces it, its test figures per class with the confusion matrix, calibration, the
limits the run measured, and how to use it. Every figure comes from the run's own files
(metrics.json, calibration.json, config.json): the card is written from them, never from
memory, so eval/export.py can write it again for any finished run.
"""
import os
import re

from common import calibration, errors, metrics, phrasebank, runs, sources, summary
from common.errors import RunDirError

CARD = "README.md"
CONFUSION_PNG = "confusion_matrix.png"
RELIABILITY_PNG = "reliability.png"
PHRASEBANK_LICENSE = "cc-by-nc-sa-3.0"  # the Financial PhraseBank's, CC BY-NC-SA 3.0 (its README)
UNKNOWN_LICENSE = "unknown"
TAGS = ["keras", "keras-hub", "text-classification", "sentiment-analysis", "finance", "finsent"]


def license_of(flags, given: str = "") -> str:
    """The license a model's card states: the PhraseBank's terms for a PhraseBank model (its
    license follows the data: non-commercial, share-alike), else --license, else 'unknown'."""
    if not sources.is_own(flags.data):
        if given and given.strip() != PHRASEBANK_LICENSE:
            print(f"note: --license {given} left out: a model trained on the Financial PhraseBank carries its "
                  f"license, {PHRASEBANK_LICENSE}")
        return PHRASEBANK_LICENSE
    return (given or getattr(flags, "license", "") or UNKNOWN_LICENSE).strip()


def card_license(path: str) -> str:
    """The license in a card's front matter ('unknown' where it states none, or 'other'
    with license_name unknown)."""
    import yaml
    from huggingface_hub import ModelCard
    fix = (f"mend its front matter (the lines between the two ---), or delete the file and write it again: python "
           f"eval/export.py {errors.shell_quote(os.path.dirname(path) or '.')} (own data: with --license ID)")
    try:
        data = ModelCard.load(path).data.to_dict()
    except (ValueError, TypeError, yaml.YAMLError) as e:  # edited by hand: not YAML, not a mapping, odd keys
        raise RunDirError(f"{path}: its front matter is not a card's YAML ({errors.first_line(e)}); {fix}") from None
    lic = data.get("license") or UNKNOWN_LICENSE
    if lic == "other":
        lic = data.get("license_name") or UNKNOWN_LICENSE
    if not isinstance(lic, str):
        raise RunDirError(f"{path}: its license is {lic!r}, not a name (e.g. cc-by-4.0); {fix}")
    return lic


def _cell(text) -> str:
    """A user's string (a label, a path) as one markdown table cell / line: no pipes, no newlines."""
    return re.sub(r"\s+", " ", str(text)).replace("|", "\\|").strip()


def _code(text: str, lang: str = "") -> str:
    """A fenced block longer than any run of backticks inside it (a hostile argument cannot close it)."""
    fence = "`" * max(3, max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence}{lang}\n{text}\n{fence}"


def _hub_id(name: str) -> str:
    """`name` if it reads as a Hub model id (owner/name, or a bare canonical name), else ''."""
    return name if re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", name or "") and not os.path.exists(name) else ""


def write(run_dir: str, license: str = "", published_as: str = "", folder: str = None) -> str:
    """Write README.md (and confusion_matrix.png) for the finished run in run_dir, into
    `folder` (default: the run folder); atomically. `published_as`: the hf:// name or folder
    the model was published to (the usage section then loads it from there)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData
    config = runs.load_run(run_dir, need_model=False)
    flags = runs.run_flags(config)
    m = summary.read_metrics(run_dir)  # (its figures checked: a file edited by hand is one line, not a traceback)
    cal = calibration.read(run_dir)
    folder = folder or run_dir
    resolved = config.get("resolved", {})
    labels = list(resolved.get("labels") or sources.labels_of(flags))
    own = sources.is_own(flags.data)
    earlier = os.path.join(run_dir, CARD)
    if own and not license and os.path.exists(earlier):  # what eval/export.py --license stated stays
        stated = card_license(earlier)
        license = "" if stated == UNKNOWN_LICENSE else stated
    lic = license_of(flags, license)
    name = os.path.basename(os.path.normpath(run_dir))
    base = "" if flags.init_from else _hub_id(flags.model)
    test, val = m["test"], m["validation"]

    if own:
        data_name, data_type, config_name = "own labelled data", "own", None
    else:
        level = phrasebank.level_name(flags.agreement)
        data_name, data_type = f"Financial PhraseBank ({level})", phrasebank.HUB_REPO
        config_name = f"sentences_{level.lower()}"
    figures = [("accuracy", "accuracy", "Test accuracy", None), ("f1", "macro_f1", "Test macro-F1", {"average": "macro"})]
    card_data = ModelCardData(
        language="en", license=lic.lower() if lic.lower() in LICENSE_IDS else "other",
        **({} if lic.lower() in LICENSE_IDS else {"license_name": lic}),
        library_name="keras-hub", pipeline_tag="text-classification", tags=TAGS,
        datasets=None if own else [phrasebank.HUB_REPO], base_model=base or None, model_name=name,
        eval_results=[EvalResult(task_type="text-classification", task_name="Text Classification",
                                 dataset_type=data_type, dataset_name=data_name, dataset_config=config_name,
                                 dataset_split="test", metric_type=kind, metric_value=float(test[key]),
                                 metric_name=title, metric_args=args) for kind, key, title, args in figures])

    text = [f"# {_cell(name)}: {', '.join(_cell(l) for l in labels)}", ""]
    text += [f"A text classifier fine-tuned from `{_cell(flags.init_from and 'the run ' + flags.init_from or flags.model)}` "
             f"({resolved.get('params', 0) / 1e6:.1f}M parameters) with this project's `train/{config.get('script')}`. "
             f"It labels a text as one of {len(labels)} classes, in this id order: "
             + ", ".join(f"`{_cell(l)}` ({i})" for i, l in enumerate(labels)) + ". It reads at most "
             f"{flags.max_length} tokens of a text (the rest is cut off).", ""]
    text += ["## Training data", ""]
    sizes = m.get("sizes", {})
    split_sizes = ", ".join(f"{k} {sizes[k]}" for k in ("train", "validation", "test") if k in sizes)
    if own:
        files = resolved.get("data_files", {})
        text += ["The user's own labelled file(s), by sha256:", ""]
        # (the file's name, not its path: a published card would show the trainer's folders)
        text += [f"- `{_cell(os.path.basename(path))}`: `{digest}`" for path, digest in files.items()]
        how = (f"drawn from the one file, class-stratified 80/10/10, --split-seed {flags.split_seed}"
               if len(files) == 1 else "as given by the train / validation / test files")
        text += ["", f"Split: {how} ({split_sizes} texts)."]
    else:
        text += [f"The Financial PhraseBank v1.0 (Malo et al., 2014: sentences of English financial news, labelled "
                 f"by finance-literate annotators), {level}: the sentences {'all' if flags.agreement == 'all' else 'at least ' + flags.agreement + '% of the'} "
                 f"annotators agreed on; split `{flags.split}` ({split_sizes} sentences)."]
    text += ["", "## License", ""]
    if not own:
        text += ["CC BY-NC-SA 3.0, as the Financial PhraseBank's: a model trained on it is for non-commercial use, and "
                 "what you share built on it must carry the same terms (https://creativecommons.org/licenses/"
                 "by-nc-sa/3.0/)."]
    elif lic == UNKNOWN_LICENSE:
        text += ["Unknown: the run was not given one. The model carries the terms of the data it was trained on; "
                 "state them with `--license` (train scripts, eval/export.py) before sharing it."]
    else:
        text += [f"`{_cell(lic)}`, as given with --license for the data it was trained on."]
    text += ["", "## Recipe", "", "The command that trained it (seed, data and flags as given):", ""]
    text += [_code(errors.shell_join(["python", f"train/{config.get('script')}", *map(str, config.get("argv", []))]), "bash")]
    text += ["", f"Precision {resolved.get('precision')}, {resolved.get('replicas')} replica(s); best epoch "
             f"{m.get('best_epoch')} by validation {flags.select_metric} of {len(m.get('train_loss_per_epoch', []))} "
             f"trained. Versions: " + ", ".join(f"{k} {v}" for k, v in (config.get("versions") or {}).items()
                                                  if k in ("tensorflow", "keras", "keras-hub")) + "."]
    prior = m.get("restore_prior") or {}
    if "without_prior" in prior:
        text += [f"Class prior (--restore-prior {prior['mode']}): {'restored' if prior['restored'] else 'not restored'}"
                 f"; validation {flags.select_metric} {prior['without_prior']:.4f} as trained, {prior['with_prior']:.4f} "
                 f"with the prior."]
    text += ["", "## Results", "",
             f"Test split ({test['n']} texts): accuracy **{test['accuracy']:.4f}**, macro-F1 **{test['macro_f1']:.4f}** "
             f"(validation, {val['n']}: accuracy {val['accuracy']:.4f}, macro-F1 {val['macro_f1']:.4f}).", "",
             "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    text += [f"| {_cell(c)} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | {v['support']} |"
             for c, v in test["per_class"].items()]
    text += ["", f"![confusion matrix, test split]({CONFUSION_PNG})", ""]
    if cal:
        t = cal["test"]
        text += ["Calibration: temperature scaling fitted on the validation split, T = "
                 f"{cal['temperature']:.4f}; test ECE {t['before']['ece']:.4f} before, {t['after']['ece']:.4f} after "
                 f"({cal.get('ece_bins', 15)} bins; NLL {t['before']['nll']:.4f} -> {t['after']['nll']:.4f}). "
                 "The probabilities predict.py and the published model give are the calibrated ones.", ""]
    weakest = min(test["per_class"].items(), key=lambda kv: kv[1]["f1"])
    text += ["## Limits", "",
             f"- Measured only on the test split above, drawn from the same source as the training data; expect lower "
             f"figures on other text. Its weakest class here is `{_cell(weakest[0])}` (test F1 {weakest[1]['f1']:.4f}, "
             f"{weakest[1]['support']} texts)."]
    if not own:
        text += ["- Trained on sentences of English news about (mostly Finnish) listed companies: not measured on "
                 "social media posts, headlines of other markets, long documents (cut at the token limit) or any "
                 "other language.",
                 (f"- {level} holds only the sentences every annotator agreed on; sentences they disputed are harder "
                  f"for the model too (this project's eval/agreement_matrix.py measures that for a run)."
                  if flags.agreement == "all" else
                  f"- {level} includes sentences only some annotators agreed on: its labels, and so its test figures, "
                  f"are noisier than AllAgree's.")]
    hub = published_as if published_as.startswith("hf://") else None
    where = hub or published_as or "hf://OWNER/NAME"
    text += ["", "## How to use", "", "With this project (labels, calibrated probabilities, `--min-confidence`):", "",
             _code(f"python eval/predict.py {errors.shell_quote(published_as or run_dir)} --input texts.csv --output "
                   f"labelled.csv", "bash"), "",
             "With KerasHub alone, once published (`python eval/publish.py RUN --to hf://OWNER/NAME`): the logits "
             "hold the calibration, so their softmax is the calibrated probabilities:", "",
             _code(f"import keras, keras_hub\nclassifier = keras_hub.models.TextClassifier.from_preset("
                   f"{where!r})\nprobabilities = keras.ops.softmax(classifier.predict([\"Operating profit rose .\"]))"
                   f"\n# columns: {', '.join(_cell(l) for l in labels)}", "python"), "",
             "A run folder also holds `serving/`, a TensorFlow SavedModel taking raw strings, written when the run "
             "finishes (or, after `--no-serving`, by `python eval/export.py RUN`; docs/using-the-model.md)."]
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(text) + "\n")

    png = metrics.figure_png(metrics.confusion_figure(test["confusion_matrix"], f"test, {name}", labels))
    runs.atomic_write(os.path.join(folder, CONFUSION_PNG), lambda out: out.write(png), binary=True)  # then the card
    runs.write_text(os.path.join(folder, CARD), str(card))
    return os.path.join(folder, CARD)


def write_for_run(run_dir: str) -> None:
    """The card a finishing run writes: one that cannot be written (a figure missing from an
    edited file, a full disk) is a note naming the fix, never a failed run."""
    try:
        print(f"model card -> {write(run_dir)}")
    except Exception as e:  # noqa: BLE001  (the run's results are written; the card is their summary)
        print(f"note: no model card ({type(e).__name__}: {errors.first_line(e)}); write it with "
              f"python eval/export.py {errors.shell_quote(run_dir)}")


# Licenses the Hub knows by id (a part of its list: https://huggingface.co/docs/hub/repositories-licenses);
# any other goes in as license: other, license_name: <it>
LICENSE_IDS = {"apache-2.0", "mit", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "cc-by-nc-sa-4.0", "cc-by-nc-sa-3.0",
               "cc-by-nc-3.0", "cc-by-3.0", "cc-by-sa-3.0", "cc0-1.0", "bsd-3-clause", "bsd-2-clause", "gpl-3.0",
               "lgpl-3.0", "agpl-3.0", "openrail", "unlicense", "other"}
