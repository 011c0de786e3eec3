# Paths and helpers shared by the rules. One dataset per configuration file.
import hashlib
import json
import re
from pathlib import Path

from unetpipe.config import check_cross_fields, rule_params, upstream_sections
from unetpipe.splits import fold_names

# The rules between config keys that need no data, as the `unetpipe` commands apply them.
check_cross_fields(config)
DATASET = config["dataset"]["name"]
RUN = config["run"]
RESOURCES = f"resources/{DATASET}"
RESULTS = f"results/{DATASET}"
DATA = f"{RESULTS}/data.zarr"
LOGS = f"logs/{DATASET}"
# One run, results/<dataset>/<run>/, or one per cross-validation fold: <run>/<fold>/.
FOLDS = fold_names(config["crossval"])
RUNS = [f"{RUN}/{fold}" for fold in FOLDS] or [RUN]


wildcard_constraints:
    run="|".join(re.escape(run) for run in RUNS),


def _sorted(value):
    """Mappings with sorted keys, recursively: params compare as text, so order must not matter."""
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    return value


def section(name):
    """The result settings of a config section as a rule's params: changing one reruns that
    rule and what follows. Run settings (threads, devices, cadence ...) are not params; scripts
    read them from snakemake.config (unetpipe.config.run_settings)."""
    return _sorted(rule_params(name, config[name]))


def upstream(stage):
    """A digest of the result settings of the stages a rule builds on (those before ``stage`` in
    unetpipe.config.STAGES, less its own sections), as one of its params. Snakemake reruns a rule
    whose own params changed and then what follows by file times; but an output that a failed
    rerun removed is not rebuilt while what follows it exists, which would keep the old settings'
    results. With the digest a changed setting reruns every later rule by its own params,
    whatever is left in between.
    """
    synthetic = config["dataset"]["source"] == "synthetic"
    names = upstream_sections(stage, synthetic)
    text = json.dumps({name: section(name) for name in names}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def split(wildcards):
    """The fold of a run as params: {} for the group's own split, else crossval and fold."""
    fold = wildcards.run[len(RUN) + 1 :]
    return _sorted({"crossval": config["crossval"], "fold": fold} if fold else {})


def rule_resources(rule_name, **defaults):
    """Resources of a rule: the defaults overridden by config['resources'][rule_name]."""
    overrides = config["resources"].get(rule_name, {})
    return {**defaults, **{k: v for k, v in overrides.items() if k != "threads"}}


def rule_threads(rule_name, default):
    """Threads of a rule: config['resources'][rule_name]['threads'], else the default."""
    return config["resources"].get(rule_name, {}).get("threads", default)


def local_files():
    """Every data file of dataset.local_dir: convert's inputs, so that a file changed, added or
    removed there reruns the conversion (a folder's own time does not change when a file in it
    is overwritten)."""
    root = Path(config["dataset"]["local_dir"])
    if not root.is_dir():
        raise ValueError(f"dataset.local_dir {root}: no such folder")
    return sorted(
        str(path)
        for path in root.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.parts[-1:])
    )


def augment_shards():
    """The bank's shard folders (none when augment.bank_size is 0: training augments on the fly)."""
    if config["augment"]["bank_size"] == 0:
        return []
    return [
        f"{RESULTS}/augmented/shard-{i}.zarr"
        for i in range(config["augment"]["shards"])
    ]


def all_targets():
    """What `snakemake` builds by default: every stage, ending with the report (with
    cross-validation also the summary over the folds; with export.bioimageio the bioimage.io
    model package of each run)."""
    targets = [f"{DATA}/weights", *augment_shards()]
    for run in RUNS:
        targets += [f"{RESULTS}/{run}/metrics.json", f"{RESULTS}/{run}/report"]
        if config["export"]["bioimageio"]:
            targets.append(f"{RESULTS}/{run}/{RUN}.bioimageio.zip")
    if FOLDS:
        targets += [f"{RESULTS}/{RUN}/crossval.json"]
    return targets


# Arrays scored against labels, among those predicted: raw (validation slices), and the synthetic
# test volume, the only source whose test images come with labels.
EVALUATED = ["raw"]
if config["dataset"]["source"] == "synthetic" and config["synth"]["test_slices"] > 0:
    EVALUATED.append("test")
EVALUATED = [array for array in EVALUATED if array in config["predict"]["arrays"]]


def segment_inputs(wildcards):
    """The predictions to segment and the image they predict (the segmentation is an OME-Zarr
    image of it holding the labels); with segment.tune the dataset's labels and the predictions
    of raw too, whose training slices fix the post-processing."""
    inputs = {
        "predictions": f"{RESULTS}/{wildcards.run}/predictions/{wildcards.array}.zarr",
        "group": f"{DATA}/zarr.json",
    }
    if config["segment"]["tune"]["enabled"]:
        inputs["labels"] = f"{DATA}/labels"
        inputs["raw_predictions"] = f"{RESULTS}/{wildcards.run}/predictions/raw.zarr"
    return inputs
