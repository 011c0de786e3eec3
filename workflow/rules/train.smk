# Training (Section 3): the weighted loss of Eq. 1, SGD with momentum 0.99, checkpoints and resume.
# checkpoints/ is not an output: it survives a failed or killed job, and the rerun resumes from it
# when the training's result settings and the content of its data are unchanged.


rule train:
    input:
        raw=f"{DATA}/raw",
        labels=f"{DATA}/labels",
        weights=f"{DATA}/weights",
        bank=augment_shards() if config["train"]["data"] == "bank" else [],
    output:
        model=f"{RESULTS}/{{run}}/model.pt",
        log=f"{RESULTS}/{{run}}/train/log.csv",
        curves=f"{RESULTS}/{{run}}/train/curves.png",
    log:
        f"{LOGS}/{{run}}/train.log",
    benchmark:
        f"{LOGS}/{{run}}/benchmarks/train.tsv"
    conda:
        "../envs/torch.yaml"
    threads: rule_threads("train", 2)
    resources:
        **rule_resources(
            "train",
            gpu=0 if config["train"]["device"] == "cpu" else config["train"]["gpus"],
            mem_mb=16000,
            runtime=720,
        ),
    params:
        cfg=section("train"),
        model=section("model"),
        augment=section("augment"),
        split=split,
        upstream=upstream("train"),
    script:
        "../scripts/train.py"
