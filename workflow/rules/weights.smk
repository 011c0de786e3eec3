# rules: weights -- the weight map of Eq. 2 for every labelled slice, added to the dataset's group.


rule weights:
    input:
        group=f"{DATA}/zarr.json",
        labels=f"{DATA}/labels",
    output:
        directory(f"{DATA}/weights"),
    log:
        f"{LOGS}/weights.log",
    benchmark:
        f"{LOGS}/benchmarks/weights.tsv"
    conda:
        "../envs/preprocess.yaml"
    threads: rule_threads("weights", 4)
    resources:
        **rule_resources("weights", mem_mb=4000, runtime=60),
    params:
        cfg=section("weights"),
        upstream=upstream("weights"),
    script:
        "../scripts/weights.py"
