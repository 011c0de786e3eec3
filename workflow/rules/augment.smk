# rules: augment -- the augmentation of Section 3.1 precomputed into a bank of tiles, in shards
# (one job each), so that training on GPU nodes with few CPUs never waits for data.


rule augment:
    input:
        group=f"{DATA}/zarr.json",
        raw=f"{DATA}/raw",
        labels=f"{DATA}/labels",
        weights=f"{DATA}/weights",
    output:
        directory(f"{RESULTS}/augmented/shard-{{shard}}.zarr"),
    log:
        f"{LOGS}/augment_{{shard}}.log",
    benchmark:
        f"{LOGS}/benchmarks/augment_{{shard}}.tsv"
    wildcard_constraints:
        shard=r"\d+",
    conda:
        "../envs/preprocess.yaml"
    resources:
        **rule_resources("augment", mem_mb=4000, runtime=60),
    params:
        cfg=section("augment"),
        model={key: config["model"][key] for key in ("depth", "padding")},
        upstream=upstream(*DATA_SECTIONS, "weights"),
    script:
        "../scripts/augment.py"
