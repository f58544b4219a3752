"""Pipelines: a YAML file of steps, validated before anything runs, then run step by step.

``model`` is the file format, ``loader`` reads and checks it (every problem at once, with line
numbers), ``templating`` fills ``{params.x}``-style placeholders, ``runner`` executes the steps
as subprocesses with MLflow tracking, ``records`` and ``locks`` keep the run history and the
one-run-per-model rule that the CLI and the controller share. Nothing here imports torch.
"""
