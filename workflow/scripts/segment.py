"""Rule segment: cell probabilities to uint32 instances (unetpipe.segment)."""

from unetpipe.log import logged
from unetpipe.segment import segment_zarr

snakemake = globals()["snakemake"]
with logged(snakemake.log[0], "rule segment"):
    segment_zarr(snakemake.input[0], snakemake.output[0], snakemake.params.cfg, snakemake.threads)
