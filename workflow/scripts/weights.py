"""Rule weights: the weight map of Eq. 2 into the dataset's Zarr group (unetpipe.weights)."""

from pathlib import Path

from unetpipe.log import setup_logging
from unetpipe.weights import write_weights

snakemake = globals()["snakemake"]
setup_logging(snakemake.log[0])
write_weights(Path(snakemake.input.group).parent, snakemake.params.cfg, threads=snakemake.threads)
