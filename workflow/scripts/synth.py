"""Rule synth: write the built-in synthetic EM-like dataset (unetpipe.synthetic)."""

from pathlib import Path

from unetpipe.log import logged
from unetpipe.synthetic import write_synthetic

snakemake = globals()["snakemake"]
with logged(snakemake.log[0], "rule synth"):
    dataset = snakemake.params.dataset
    write_synthetic(
        Path(snakemake.output.group).parent,
        **snakemake.params.cfg,
        val_slices=dataset["val_slices"],
        voxel_size=dataset["voxel_size"],
        dataset=dataset["name"],
    )
