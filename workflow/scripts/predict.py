"""Rule predict: overlap-tile inference of one array of the dataset (unetpipe.predict)."""

from pathlib import Path

from unetpipe.log import setup_logging
from unetpipe.predict import predict_zarr

snakemake = globals()["snakemake"]
setup_logging(snakemake.log[0])
options = {key: value for key, value in snakemake.params.cfg.items() if key != "arrays"}
if options["scheduler"] == "threads" and options["threads_per_worker"] is None:
    options["threads_per_worker"] = snakemake.threads
predict_zarr(
    snakemake.input.model,
    Path(snakemake.input.group).parent / snakemake.wildcards.array,
    snakemake.output[0],
    **options,
)
