"""Rule train: train the U-Net on the dataset's Zarr group (unetpipe.train)."""

from pathlib import Path

from unetpipe.log import setup_logging
from unetpipe.train import train

snakemake = globals()["snakemake"]
setup_logging(snakemake.log[0])
bank = snakemake.input.bank  # one shard comes as a str, several or none as a list
train(
    Path(snakemake.input.raw).parent,
    Path(snakemake.output.model).parent,
    snakemake.params.cfg,
    snakemake.params.model,
    snakemake.params.augment,
    bank=[bank] if isinstance(bank, str) else list(bank),
    threads=snakemake.threads,
)
