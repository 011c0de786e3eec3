"""Rule export_bioimageio: the network as a bioimage.io model package (unetpipe.bioimageio)."""

from pathlib import Path

from unetpipe.bioimageio import export_bioimageio
from unetpipe.log import logged

snakemake = globals()["snakemake"]
with logged(snakemake.log[0], "rule export_bioimageio"):
    export_bioimageio(
        Path(snakemake.input.model).parent,
        snakemake.output[0],
        snakemake.params.cfg,
        data=Path(snakemake.input.group).parent,
        threads=snakemake.threads,
    )
