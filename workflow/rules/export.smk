# rule export_bioimageio -- the trained network as a bioimage.io model package (model spec 0.5) for
# ilastik, deepImageJ, QuPath, BiaPy and napari, built at the end of a run when export.bioimageio is
# true (all_targets). The zip appears only when bioimageio.core's model test of the package passed.


rule export_bioimageio:
    input:
        model=f"{RUN_DIR}/model.pt",
        group=f"{DATA}/zarr.json",
        metrics=f"{RUN_DIR}/metrics.json",
        report=f"{RUN_DIR}/report",
    output:
        f"{RUN_DIR}/{RUN}.bioimageio.zip",
    log:
        f"{LOGS}/export_bioimageio.log",
    benchmark:
        f"{LOGS}/benchmarks/export_bioimageio.tsv"
    conda:
        "../envs/torch.yaml"
    threads: rule_threads("export_bioimageio", 2)
    resources:
        **rule_resources("export_bioimageio", mem_mb=4000, runtime=30),
    params:
        cfg=section("export"),
    script:
        "../scripts/export.py"
