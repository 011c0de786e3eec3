"""Rule download: fetch the registry dataset, sha256-verified and resumable (unetpipe.datasets)."""

from pathlib import Path

from unetpipe.datasets import download_dataset
from unetpipe.log import setup_logging

snakemake = globals()["snakemake"]
setup_logging(snakemake.log[0])
cfg = snakemake.params.cfg
download_dataset(cfg["source"], Path(snakemake.output[0]).parent, cfg["url"], cfg["sha256"])
