# Training: pretraining, retraining (one per forget set, shared by every arm), the choice
# of fine-tuning's rate (when the profile gives candidates) and the unlearning runs.


rule pretrain:
    output:
        ckpt=PRE + "/pretrain.pt",
        notebook=f"{NB}/02_pretrain_{NAME}.ipynb",
    params:
        experiment=pretrain_params,
    threads: threads_of("pretrain")
    resources:
        **resources_of("pretrain"),
    benchmark:
        f"{BENCH}/pretrain/{NAME}.tsv"
    run:
        papermill("02_pretrain", output.notebook,
                  {"experiment": placed(params.experiment), "checkpoint": output.ckpt}, threads)


rule retrain:
    input:
        pretrained=PRE + "/pretrain.pt",  # the target is the raw model's accuracy
    output:
        ckpt=FORGET + "/retrain.pt",
        notebook=f"{NB}/02_retrain_{JOB}.ipynb",
    params:
        experiment=retrain_params,
    threads: threads_of("pretrain")
    resources:
        **resources_of("pretrain"),
    benchmark:
        f"{BENCH}/retrain/{JOB}.tsv"
    run:
        papermill("02_pretrain", output.notebook,
                  {"experiment": placed(params.experiment), "checkpoint": output.ckpt,
                   "phase": "retrain", "pretrained": input.pretrained}, threads)


# Fine-tuning's rate, chosen once per pretraining and forget set among the profile's
# finetune_lr_candidates (when it gives some and no finetune_lr) by fine-tuning the unpruned
# raw model at each; every arm and unlearning seed of the forget set then fine-tunes at it.
rule finetune_rate:
    input:
        pretrained=PRE + "/pretrain.pt",
    output:
        rate=FORGET + "/finetune_rate.json",
        notebook=f"{NB}/12_finetune_rate_{JOB}.ipynb",
    params:
        experiment=finetune_rate_params,
    threads: threads_of("unlearn")
    resources:
        **resources_of("unlearn"),
    benchmark:
        f"{BENCH}/finetune_rate/{JOB}.tsv"
    run:
        papermill("12_finetune_rate", output.notebook,
                  {"experiment": placed(params.experiment), "pretrained": input.pretrained,
                   "out": output.rate}, threads)


def rate_input(wc):
    """The run's chosen fine-tuning rate (rule finetune_rate), when it chooses one."""
    if not uses_rate(unlearn_params(wc)):
        return {}
    return {"rate": FORGET.format(**dict(wc.items())) + "/finetune_rate.json"}


rule unlearn:
    input:
        unpack(rate_input),
        pretrained=PRE + "/pretrain.pt",
        retrained=FORGET + "/retrain.pt",
    output:
        metrics=RUN + "/metrics.json",
        notebook=f"{NB}/03_unlearn_{JOB}_{{arm}}-s{{useed}}-u{{uhash}}.ipynb",
    params:
        experiment=unlearn_params,
    threads: threads_of("unlearn")
    resources:
        **resources_of("unlearn"),
    benchmark:
        f"{BENCH}/unlearn/{JOB}_{{arm}}-s{{useed}}-u{{uhash}}.tsv"
    run:
        papermill("03_unlearn", output.notebook,
                  {"experiment": placed(params.experiment), "pretrained": input.pretrained,
                   "retrained": input.retrained, "finetune_rate": input.get("rate"),
                   "out_dir": str(Path(output.metrics).parent)}, threads)
