"""Rule segment: cell probabilities to uint32 instances (unetpipe.segment)."""

from unetpipe.log import setup_logging
from unetpipe.segment import segment_zarr

snakemake = globals()["snakemake"]
setup_logging(snakemake.log[0])
segment_zarr(snakemake.input[0], snakemake.output[0], snakemake.params.cfg, snakemake.threads)
