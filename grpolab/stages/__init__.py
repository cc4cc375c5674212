"""The R1 pipeline's stages beyond GRPO (evaluation, SFT, rejection sampling, distillation) and the
pipeline that chains them. Each stage has a typed config, reads and writes plain files in its run folder,
and is exposed as a `grpolab` subcommand in `grpolab/commands/`."""
