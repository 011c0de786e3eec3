"""Rule weights: the weight map of Eq. 2 into the dataset's Zarr group (unetpipe.weights)."""

from pathlib import Path

from unetpipe.log import logged
from unetpipe.weightmaps import write_weights

snakemake = globals()["snakemake"]
with logged(snakemake.log[0], "rule weights"):
    write_weights(
        Path(snakemake.input.group).parent, snakemake.params.cfg, threads=snakemake.threads
    )
