# rule export_bioimageio -- the trained network as a bioimage.io model package (model spec 0.5) for
# ilastik, deepImageJ, QuPath, BiaPy and napari, built at the end of a run when export.bioimageio is
# true (all_targets). The zip appears only when bioimageio.core's model test of the package passed.


rule export_bioimageio:
    input:
        model=f"{RESULTS}/{{run}}/model.pt",
        group=f"{DATA}/zarr.json",
        metrics=f"{RESULTS}/{{run}}/metrics.json",
        report=f"{RESULTS}/{{run}}/report",
    output:
        f"{RESULTS}/{{run}}/{RUN}.bioimageio.zip",
    log:
        f"{LOGS}/{{run}}/export_bioimageio.log",
    benchmark:
        f"{LOGS}/{{run}}/benchmarks/export_bioimageio.tsv"
    conda:
        "../envs/torch.yaml"
    threads: rule_threads("export_bioimageio", 2)
    resources:
        **rule_resources("export_bioimageio", mem_mb=4000, runtime=30),
    params:
        cfg=section("export"),
        upstream=upstream("export"),
    script:
        "../scripts/export.py"
