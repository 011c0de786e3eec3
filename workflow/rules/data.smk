# rules: data -- the built-in synthetic dataset, or a download (or local folder) converted to Zarr.
# All write the dataset's Zarr group; the weights rule later adds its own array to the same group,
# so the group's metadata and arrays are the outputs, not the whole folder.
SOURCE = config["dataset"]["source"]
DATA_OUTPUTS = {
    "group": f"{DATA}/zarr.json",
    "raw": directory(f"{DATA}/raw"),
    "labels": directory(f"{DATA}/labels"),
}


if SOURCE == "synthetic":

    rule synth:
        output:
            **DATA_OUTPUTS,
        log:
            f"{LOGS}/synth.log",
        benchmark:
            f"{LOGS}/benchmarks/synth.tsv"
        conda:
            "../envs/data.yaml"
        resources:
            **rule_resources("synth", mem_mb=2000, runtime=10),
        params:
            cfg=section("synth"),
            dataset=section("dataset"),
        script:
            "../scripts/synth.py"

else:

    if not config["dataset"]["local_dir"]:  # a registry source without a local copy

        rule download:
            output:
                f"{RESOURCES}/{SOURCE}.zip",
            log:
                f"{LOGS}/download.log",
            benchmark:
                f"{LOGS}/benchmarks/download.tsv"
            retries: 2
            conda:
                "../envs/data.yaml"
            resources:
                **rule_resources("download", mem_mb=500, runtime=60),
            params:
                cfg=section("dataset"),
            script:
                "../scripts/download.py"

    rule convert:
        input:
            (
                local_files()
                if config["dataset"]["local_dir"]
                else f"{RESOURCES}/{SOURCE}.zip"
            ),
        output:
            **DATA_OUTPUTS,
        log:
            f"{LOGS}/convert.log",
        benchmark:
            f"{LOGS}/benchmarks/convert.tsv"
        conda:
            "../envs/data.yaml"
        resources:
            **rule_resources("convert", mem_mb=4000, runtime=30),
        params:
            cfg=section("dataset"),
        script:
            "../scripts/convert.py"
