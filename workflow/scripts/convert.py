"""Rule convert: a downloaded archive or a local folder into the dataset's Zarr group."""

from pathlib import Path

from unetpipe.datasets import convert, provenance
from unetpipe.log import setup_logging

snakemake = globals()["snakemake"]
setup_logging(snakemake.log[0])
cfg = snakemake.params.cfg
convert(
    snakemake.input[0],
    Path(snakemake.output.group).parent,
    dataset=cfg["name"],
    val_slices=cfg["val_slices"],
    voxel_size=cfg["voxel_size"],
    provenance=provenance(cfg["source"], cfg["url"], cfg["sha256"]),
)
