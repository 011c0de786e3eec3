# rules: predict -- overlap-tile inference (Fig. 2) over each array of config predict.arrays, in
# Dask blocks, into an OME-Zarr 0.5 image (classes, z, y, x; the dataset's voxel_size; a pyramid
# for large planes). The output folder appears only when complete (blocks go to <output>.partial,
# which survives a killed job: the rerun resumes from its finished blocks).


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
        upstream=upstream("predict"),
    script:
        "../scripts/predict.py"
