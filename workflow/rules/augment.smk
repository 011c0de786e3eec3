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
        # The tile geometry (pool and kernel only when set: schema params_when_set).
        model={
            key: value
            for key, value in section("model").items()
            if key in ("depth", "padding", "pool", "kernel")
        },
        upstream=upstream("augment"),
    script:
        "../scripts/augment.py"
