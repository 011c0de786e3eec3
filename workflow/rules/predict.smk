# rules: predict -- overlap-tile inference (Fig. 2) over each array of config predict.arrays, in
# Dask blocks. The output folder appears only when complete (written as <output>.partial, renamed);
# the .partial folder survives a killed job and the rerun resumes from its finished blocks.


rule predict:
    input:
        model=f"{RESULTS}/{{run}}/model.pt",
        group=f"{DATA}/zarr.json",
    output:
        directory(f"{RESULTS}/{{run}}/predictions/{{array}}.zarr"),
    log:
        f"{LOGS}/{{run}}/predict_{{array}}.log",
    benchmark:
        f"{LOGS}/{{run}}/benchmarks/predict_{{array}}.tsv"
    wildcard_constraints:
        array="|".join(config["predict"]["arrays"]),
    conda:
        "../envs/torch.yaml"
    threads: rule_threads("predict", 2)
    resources:
        **rule_resources("predict", mem_mb=8000, runtime=120),
    params:
        cfg=section("predict"),
    script:
        "../scripts/predict.py"
