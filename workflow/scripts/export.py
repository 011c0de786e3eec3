"""Rule export_bioimageio: the network as a bioimage.io model package (unetpipe.bioimageio)."""

from pathlib import Path

from unetpipe.bioimageio import export_bioimageio
from unetpipe.log import setup_logging

snakemake = globals()["snakemake"]
setup_logging(snakemake.log[0])
export_bioimageio(
    Path(snakemake.input.model).parent,
    snakemake.output[0],
    snakemake.params.cfg,
    data=Path(snakemake.input.group).parent,
    threads=snakemake.threads,
)
