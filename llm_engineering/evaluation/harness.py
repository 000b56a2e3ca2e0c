"""Standard benchmarks on the merged model through EleutherAI's lm-evaluation-harness (the `lm_eval` package, the
optional extra `harness`). Hub tasks (arc_easy, hellaswag, ...) download their data; a task YAML of your own in
`eval.harness.include_path` can read a local file (`dataset_path: json`, `dataset_kwargs: {data_files: ...}`)."""

from __future__ import annotations


def _task_manager(include_path, include_defaults: bool = True):
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise ImportError("eval.harness.tasks needs lm-evaluation-harness: pip install -e '.[harness]'") from exc
    return TaskManager(include_path=include_path, include_defaults=include_defaults or not include_path)


def unknown_tasks(tasks: list[str], include_path=None) -> list[str]:
    """The names the harness does not know (checked before any step runs). Your own tasks are looked up first:
    indexing the harness's thousands of built-in task files takes seconds."""
    if include_path:
        local = set(_task_manager(include_path, include_defaults=False).all_tasks)
        if all(t in local for t in tasks):
            return []
    known = set(_task_manager(include_path).all_tasks)
    return [t for t in tasks if t not in known]


def run_harness(model, tokenizer, settings) -> dict[str, float]:
    """`harness_<task>_<metric>` for every numeric metric the harness reports (standard errors left out)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    manager = _task_manager(settings.include_path)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size)
    results = simple_evaluate(model=lm, tasks=list(settings.tasks), num_fewshot=settings.num_fewshot,
                              limit=settings.limit, task_manager=manager, log_samples=False, bootstrap_iters=0)
    metrics = {}
    for task, values in results["results"].items():
        for key, value in values.items():  # "acc,none", "acc_stderr,none", "alias"
            name = key.split(",")[0]
            if (isinstance(value, (int, float)) and not isinstance(value, bool) and not name.endswith("_stderr")
                    and name != "sample_len"):
                metrics[f"harness_{task}_{name}"] = float(value)
    return metrics
