"""Named presets of train-script flags: the one place a recipe is written down.

`--recipe NAME` on every train script (and eval/benchmark.py, eval/reproduce_study.py)
sets these as the defaults; a flag given on the command line still wins, and config.json
records the recipe, its flags and which of them the command line overrode.

- project:  the train scripts' own defaults (length buckets, batch 16, --precision auto,
            AdamW 1e-4 with warm-up and linear decay, layer-wise rate decay 0.9, frozen
            embeddings, square-root class weights, the prior put back where validation gains):
            docs/performance.md#the-default-recipe-choice-by-choice.
- notebook: the notebook's settings (../shared/notebook-figures.md): every sentence padded
            to 512, batch 8, fp32, Adam (AdamW with weight decay 0, Keras' epsilon 1e-7, no
            clipping), PolynomialDecay(5e-5, decay_steps=10000, end 0) with no warm-up, one
            rate for all layers, all weights train (embeddings too), no class weights, no
            restored prior (so an experiment that adds class weights keeps the weighted model,
            as the notebook's did).
- hf:       the Hugging Face TF text-classification example's defaults: padded to 128,
            batch 8, fp32, AdamW 5e-5 with linear decay to 0 over the run, no warm-up, no
            weight decay, one rate for all layers, embeddings train, no class weights, no
            restored prior.
"""
RECIPES = {
    "project": {},
    "notebook": dict(padding="fixed", max_length=512, batch_size=8, precision="fp32", lr=5e-5,
                     lr_schedule="linear", warmup=0.0, decay_steps=10000, weight_decay=0.0, adam_epsilon=1e-7,
                     clipnorm=0.0, layer_lr_decay=1.0, train_embeddings=True, class_weight="none",
                     restore_prior="off"),
    "hf": dict(padding="fixed", max_length=128, batch_size=8, precision="fp32", lr=5e-5, lr_schedule="linear",
               warmup=0.0, weight_decay=0.0, layer_lr_decay=1.0, train_embeddings=True, class_weight="none",
               restore_prior="off"),
}


def describe(name: str) -> str:
    """The recipe as command-line flags, for tables and logs."""
    flags = []
    for key, value in RECIPES[name].items():
        flag = "--" + key.replace("_", "-")
        flags.append(flag if value is True else f"--no-{key.replace('_', '-')}" if value is False
                     else f"{flag} {value}")
    return " ".join(flags) or "(the defaults)"


def applied(name: str, flags: dict) -> dict:
    """For config.json: the recipe, its flags, and those the command line overrode."""
    preset = RECIPES[name]
    return {"name": name, "flags": preset,
            "overridden": {k: flags[k] for k in preset if k in flags and flags[k] != preset[k]}}
