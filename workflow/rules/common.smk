# Paths and helpers shared by the rules. One dataset per configuration file.
from pathlib import Path

DATASET = config["dataset"]["name"]
RUN = config["run"]
RESOURCES = f"resources/{DATASET}"
RESULTS = f"results/{DATASET}"
DATA = f"{RESULTS}/data.zarr"
RUN_DIR = f"{RESULTS}/{RUN}"
LOGS = f"logs/{DATASET}"


def _sorted(value):
    """Mappings with sorted keys, recursively: params compare as text, so order must not matter."""
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    return value


def section(name):
    """A config section as a rule's params: changing it reruns that rule and what follows."""
    return _sorted(config[name])


def rule_resources(rule_name, **defaults):
    """Resources of a rule: the defaults overridden by config['resources'][rule_name]."""
    overrides = config["resources"].get(rule_name, {})
    return {**defaults, **{k: v for k, v in overrides.items() if k != "threads"}}


def rule_threads(rule_name, default):
    """Threads of a rule: config['resources'][rule_name]['threads'], else the default."""
    return config["resources"].get(rule_name, {}).get("threads", default)


def augment_shards():
    """The bank's shard folders (none when augment.bank_size is 0: training augments on the fly)."""
    if config["augment"]["bank_size"] == 0:
        return []
    return [
        f"{RESULTS}/augmented/shard-{i}.zarr"
        for i in range(config["augment"]["shards"])
    ]


def all_targets():
    """What `snakemake` builds by default: every stage, ending with the report (and the
    bioimage.io model package when export.bioimageio is true)."""
    return [
        f"{DATA}/weights",
        *augment_shards(),
        f"{RUN_DIR}/metrics.json",
        f"{RUN_DIR}/report",
        *(
            [f"{RUN_DIR}/{RUN}.bioimageio.zip"]
            if config["export"]["bioimageio"]
            else []
        ),
    ]
