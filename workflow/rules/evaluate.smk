# rules: segment, evaluate, report -- instances from the probabilities, the measures of the paper's
# Section 4 (metrics.json) and the report (figures for `snakemake --report`). Each segmentation is
# an OME-Zarr label image beside its predictions (image-label source ../../predictions/<array>.zarr;
# not in predictions/<array>.zarr/labels/, which would nest one rule's output in another's).


# Arrays scored against labels, among those predicted: raw (validation slices), and the synthetic
# test volume, the only source whose test images come with labels.
EVALUATED = ["raw"]
if config["dataset"]["source"] == "synthetic" and config["synth"]["test_slices"] > 0:
    EVALUATED.append("test")
EVALUATED = [array for array in EVALUATED if array in config["predict"]["arrays"]]


rule segment:
    input:
        f"{RUN_DIR}/predictions/{{array}}.zarr",
    output:
        directory(f"{RUN_DIR}/segmentation/{{array}}.zarr"),
    log:
        f"{LOGS}/segment_{{array}}.log",
    benchmark:
        f"{LOGS}/benchmarks/segment_{{array}}.tsv"
    conda:
        "../envs/evaluate.yaml"
    threads: rule_threads("segment", 2)
    resources:
        **rule_resources("segment", mem_mb=4000, runtime=30),
    params:
        cfg=section("segment"),
    script:
        "../scripts/segment.py"


rule evaluate:
    input:
        group=f"{DATA}/zarr.json",
        raw=f"{DATA}/raw",
        labels=f"{DATA}/labels",
        predictions=expand(f"{RUN_DIR}/predictions/{{array}}.zarr", array=EVALUATED),
        segmentations=expand(f"{RUN_DIR}/segmentation/{{array}}.zarr", array=EVALUATED),
    output:
        f"{RUN_DIR}/metrics.json",
    log:
        f"{LOGS}/evaluate.log",
    benchmark:
        f"{LOGS}/benchmarks/evaluate.tsv"
    conda:
        "../envs/evaluate.yaml"
    resources:
        **rule_resources("evaluate", mem_mb=4000, runtime=30),
    params:
        cfg=section("evaluate"),
        arrays=EVALUATED,
    script:
        "../scripts/evaluate.py"


rule report:
    input:
        metrics=f"{RUN_DIR}/metrics.json",
        group=f"{DATA}/zarr.json",
        predictions=f"{RUN_DIR}/predictions/raw.zarr",
        segmentation=f"{RUN_DIR}/segmentation/raw.zarr",
        log=f"{RUN_DIR}/train/log.csv",
    output:
        report(
            directory(f"{RUN_DIR}/report"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Results",
        ),
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{LOGS}/benchmarks/report.tsv"
    conda:
        "../envs/evaluate.yaml"
    resources:
        **rule_resources("report", mem_mb=2000, runtime=10),
    params:
        cfg=section("report"),
    script:
        "../scripts/report.py"
