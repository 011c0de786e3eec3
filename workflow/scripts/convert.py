"""Rule convert: a downloaded archive or a local folder into the dataset's Zarr group."""

from pathlib import Path

from unetpipe.datasets import convert, provenance
from unetpipe.log import logged

snakemake = globals()["snakemake"]
with logged(snakemake.log[0], "rule convert"):
    cfg = snakemake.params.cfg
    convert(
        cfg["local_dir"] or snakemake.input[0],
        Path(snakemake.output.group).parent,
        dataset=cfg["name"],
        val_slices=cfg["val_slices"],
        voxel_size=cfg["voxel_size"],
        provenance=provenance(cfg["source"], cfg["url"], cfg["sha256"]),
        labels=cfg["labels"],
        sequences=cfg["sequences"],
        silver_truth=cfg["silver_truth"],
        unlabelled=cfg["unlabelled"],
    )
