"""Rule evaluate: metrics.json of the run (unetpipe.evaluate.evaluate_run)."""

from pathlib import Path

from unetpipe.evaluate import evaluate_run
from unetpipe.io import open_data
from unetpipe.log import logged
from unetpipe.splits import resolve

snakemake = globals()["snakemake"]
with logged(snakemake.log[0], "rule evaluate"):
    data = Path(snakemake.input.group).parent
    arrays, split = snakemake.params.arrays, snakemake.params.split
    evaluate_run(
        data,
        dict(zip(arrays, snakemake.input.predictions, strict=True)),
        dict(zip(arrays, snakemake.input.segmentations, strict=True)),
        snakemake.output[0],
        snakemake.params.cfg,
        resolve(open_data(data), **split) if split else None,
    )
