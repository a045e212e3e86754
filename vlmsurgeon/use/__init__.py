"""Using a model, a run or an export: loading it for inference, generating answers, chat, and
evaluation with its report.

May import: `ship/` (to load a run's adapter as trained) and everything below it; not `train/`
or `cli/`."""
