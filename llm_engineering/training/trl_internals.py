"""The part of TRL below its public API this project relies on, in one place: checked by
tests/test_library_internals.py, so a TRL release that changes it fails there, by name."""


def record_metric(trainer, name: str, value: float, training: bool) -> None:
    """Add a value to the metric TRL's trainers average and log at each logging step (`mean_token_accuracy` and the
    like): its `log` reads them from `_metrics[mode]`, and there is no public way to add one from a loss."""
    trainer._metrics["train" if training else "eval"][name].append(value)
