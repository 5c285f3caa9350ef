"""The training loop of the lab: :func:`fit` and the pieces it is made of.

``train`` (the loop, evaluation, model selection on the validation split), ``train_job``
(``bnlab train``), ``optim`` (optimizers, step-indexed schedules), ``distributed``
(torchrun/DDP), ``progress`` (the terminal progress bar) and ``metrics`` (``metrics.jsonl``).
"""
