"""Rule download: fetch the registry dataset, sha256-verified and resumable (unetpipe.datasets)."""

from pathlib import Path

from unetpipe.datasets import download_dataset
from unetpipe.log import logged

snakemake = globals()["snakemake"]
with logged(snakemake.log[0], "rule download"):
    cfg = snakemake.params.cfg
    download_dataset(cfg["source"], Path(snakemake.output[0]).parent, cfg["url"], cfg["sha256"])
