"""Rule predict: overlap-tile inference of one array of the dataset (unetpipe.predict)."""

from pathlib import Path

from unetpipe.config import run_settings
from unetpipe.log import logged
from unetpipe.predict import predict_zarr

snakemake = globals()["snakemake"]
with logged(snakemake.log[0], "rule predict"):
    cfg = {**snakemake.params.cfg, **run_settings("predict", snakemake.config["predict"])}
    options = {key: value for key, value in cfg.items() if key != "arrays"}
    if options["scheduler"] == "threads" and options["threads_per_worker"] is None:
        options["threads_per_worker"] = snakemake.threads
    predict_zarr(
        snakemake.input.model,
        Path(snakemake.input.group).parent / snakemake.wildcards.array,
        snakemake.output[0],
        **options,
    )
