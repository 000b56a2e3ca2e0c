"""The loss curve as a picture, for the MLflow run page and the model card (MLflow's own chart needs clicks)."""

from __future__ import annotations

from pathlib import Path


def loss_curve(log_history: list[dict], path: Path) -> Path:
    """Train loss per logging step and eval loss per evaluation, from the Trainer's log history."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in step containers
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e and "step" in e]
    figure, axes = plt.subplots(figsize=(6, 3.2))
    for points, label, style in ((train, "train loss", "-"), (evals, "eval loss", "o--")):
        if points:
            axes.plot(*zip(*points), style, label=label)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss (per trained token)")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    losses = [loss for _, loss in train + evals if loss > 0]
    if losses and max(losses) / min(losses) >= 4:  # a long run's fall reads on a log axis; a short one's does not
        axes.set_yscale("log")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
