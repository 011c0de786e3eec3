# rules: segment, evaluate, report -- instances from the probabilities, the measures of the paper's
# Section 4 (metrics.json) and the report (figures for `snakemake --report`). Each segmentation is
# an OME-Zarr image of the array predicted holding the instances as labels/cells (NGFF: napari
# opens the image with its labels; not in predictions/<array>.zarr/labels/, which would nest one
# rule's output in another's).


rule segment:
    input:
        unpack(segment_inputs),
    output:
        directory(f"{RESULTS}/{{run}}/segmentation/{{array}}.zarr"),
    log:
        f"{LOGS}/{{run}}/segment_{{array}}.log",
    benchmark:
        f"{LOGS}/{{run}}/benchmarks/segment_{{array}}.tsv"
    conda:
        "../envs/evaluate.yaml"
    threads: rule_threads("segment", 2)
    resources:
        # tuning holds a labelling per thread (DIC-HeLa's 84 frames: 2.2 GB on 1, 3.4 GB on 2)
        **rule_resources(
            "segment", mem_mb=1000 + 1500 * rule_threads("segment", 2), runtime=30
        ),
    params:
        cfg=section("segment"),
        split=split,
        upstream=upstream("segment"),
    script:
        "../scripts/segment.py"


rule evaluate:
    input:
        group=f"{DATA}/zarr.json",
        raw=f"{DATA}/raw",
        labels=f"{DATA}/labels",
        predictions=expand(
            f"{RESULTS}/{{{{run}}}}/predictions/{{array}}.zarr", array=EVALUATED
        ),
        segmentations=expand(
            f"{RESULTS}/{{{{run}}}}/segmentation/{{array}}.zarr", array=EVALUATED
        ),
    output:
        f"{RESULTS}/{{run}}/metrics.json",
    log:
        f"{LOGS}/{{run}}/evaluate.log",
    benchmark:
        f"{LOGS}/{{run}}/benchmarks/evaluate.tsv"
    conda:
        "../envs/evaluate.yaml"
    resources:
        **rule_resources("evaluate", mem_mb=4000, runtime=30),
    params:
        cfg=section("evaluate"),
        arrays=EVALUATED,
        split=split,
        upstream=upstream("evaluate"),
    script:
        "../scripts/evaluate.py"


rule report:
    input:
        metrics=f"{RESULTS}/{{run}}/metrics.json",
        group=f"{DATA}/zarr.json",
        predictions=f"{RESULTS}/{{run}}/predictions/raw.zarr",
        segmentation=f"{RESULTS}/{{run}}/segmentation/raw.zarr",
        log=f"{RESULTS}/{{run}}/train/log.csv",
    output:
        report(
            directory(f"{RESULTS}/{{run}}/report"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Results",
        ),
    log:
        f"{LOGS}/{{run}}/report.log",
    benchmark:
        f"{LOGS}/{{run}}/benchmarks/report.tsv"
    conda:
        "../envs/evaluate.yaml"
    resources:
        **rule_resources("report", mem_mb=2000, runtime=10),
    params:
        cfg=section("report"),
        split=split,
        upstream=upstream("report"),
    script:
        "../scripts/report.py"


rule crossval:
    input:
        expand(f"{RESULTS}/{{run}}/metrics.json", run=RUNS),
    output:
        json=f"{RESULTS}/{RUN}/crossval.json",
        table=f"{RESULTS}/{RUN}/crossval.md",
    log:
        f"{LOGS}/{RUN}/crossval.log",
    benchmark:
        f"{LOGS}/{RUN}/benchmarks/crossval.tsv"
    conda:
        "../envs/evaluate.yaml"
    resources:
        **rule_resources("crossval", mem_mb=1000, runtime=10),
    params:
        folds=FOLDS,
        upstream=upstream("crossval"),
    script:
        "../scripts/crossval.py"
