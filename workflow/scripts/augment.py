"""Rule augment: one shard of the bank of augmented tiles (unetpipe.augment)."""

from pathlib import Path

from unetpipe.augment import write_bank
from unetpipe.log import logged
from unetpipe.model import network_output_size

snakemake = globals()["snakemake"]
with logged(snakemake.log[0], "rule augment"):
    cfg, model = snakemake.params.cfg, snakemake.params.model
    write_bank(
        Path(snakemake.input.group).parent,
        snakemake.output[0],
        shard=int(snakemake.wildcards.shard),
        n_shards=cfg["shards"],
        params=cfg,
        input_size=cfg["tile"],
        output_size=network_output_size(model, cfg["tile"]),
    )
