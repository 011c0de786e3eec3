"""Rule augment: one shard of the bank of augmented tiles (unetpipe.augment.augment_stage)."""

from pathlib import Path

from unetpipe.augment import augment_stage
from unetpipe.log import logged

snakemake = globals()["snakemake"]
with logged(snakemake.log[0], "rule augment"):
    augment_stage(
        Path(snakemake.input.group).parent,
        snakemake.output[0],
        int(snakemake.wildcards.shard),
        snakemake.params.cfg,
        snakemake.params.model,
    )
