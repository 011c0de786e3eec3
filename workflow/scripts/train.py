"""Rule train: train the U-Net on the dataset's Zarr group (unetpipe.train)."""

from pathlib import Path

from unetpipe.config import run_settings
from unetpipe.log import logged
from unetpipe.splits import rule_split
from unetpipe.train import train

snakemake = globals()["snakemake"]
with logged(snakemake.log[0], "rule train"):
    data = Path(snakemake.input.raw).parent
    bank = snakemake.input.bank  # one shard comes as a str, several or none as a list
    train(
        data,
        Path(snakemake.output.model).parent,
        {**snakemake.params.cfg, **run_settings("train", snakemake.config["train"])},
        snakemake.params.model,
        snakemake.params.augment,
        bank=[bank] if isinstance(bank, str) else list(bank),
        threads=snakemake.threads,
        split=rule_split(data, snakemake.params.split),
    )
