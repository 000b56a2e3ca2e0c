"""The step-operator path for real: the SFT step sent to our local_cuda step operator runs in its own process, pinned
to the configured devices, and is tracked like any other step."""

import mlflow
from zenml.enums import ExecutionStatus

from tests.pipeline_helpers import run_in_process, tiny_parameters, write_config


def test_the_sft_step_runs_in_its_own_pinned_process_and_is_tracked_as_usual(shared_repo, family_checkpoint):
    root, uri = shared_repo  # the local stack has the local_cuda step operator; steps use it only when named
    steps = {"train_sft": {"step_operator": "local_cuda", "settings": {"step_operator": {"gpus": "0"}}}}
    # no cache: other tests' runs of the same config are in this session's store. Qwen2 (q/k/v biases, tied): the
    # family's run of the whole pipeline (tests/test_shipped_configs.py runs the others)
    parameters = tiny_parameters(family_checkpoint("qwen2"))
    parameters["export"]["output_dir"] = "outputs/tiny-operator"
    config = write_config(root / "operator.yaml", parameters, steps=steps, enable_cache=False)
    run = run_in_process(shared_repo, config)
    sft, data = run.steps["train_sft"], run.steps["load_dataset"]
    assert sft.status == ExecutionStatus.COMPLETED
    assert sft.config.step_operator == "local_cuda" and data.config.step_operator is None
    assert sft.run_metadata["process"]["pid"] != data.run_metadata["process"]["pid"]
    assert sft.run_metadata["process"]["cuda_visible_devices"] == "0"
    assert sft.run_metadata["train_steps"] == 4

    client = mlflow.MlflowClient(tracking_uri=uri)
    [mlflow_run] = client.search_runs([client.get_experiment_by_name("finetune").experiment_id],
                                      f'tags.mlflow.runName = "{run.name}"')
    assert len(client.get_metric_history(mlflow_run.info.run_id, "train_loss")) == 4  # same run as the other steps
    assert "data_train_rows" in mlflow_run.data.metrics and "finetuned_json_exact_match" in mlflow_run.data.metrics


def test_the_gpu_config_compiles_to_a_plan_that_sends_the_gpu_steps_to_the_operator(shared_repo):
    """Up to the boundary of a machine with a GPU: the compiled snapshot of configs/gpu_hub_model.yaml names the step
    operator and one GPU for the four steps that load the model, and leaves the CPU steps on the orchestrator."""
    from tests.pipeline_helpers import PROJECT, in_repo

    with in_repo(shared_repo):
        from pipelines.finetune import finetune

        snapshot = finetune.with_options(config_path=str(PROJECT / "configs" / "gpu_hub_model.yaml")).create_snapshot(
            name="gpu-plan")
    plan = {name: (step.config.step_operator, step.config.resource_settings.gpu_count)
            for name, step in snapshot.step_configurations.items()}
    assert plan == {"load_dataset": (None, None), "load_base_model": ("local_cuda", 1), "inject_adapter": ("local_cuda", 1),
                    "train_sft": ("local_cuda", 1), "merge_adapter": ("local_cuda", 1),
                    "evaluate_base": ("local_cuda", 1), "evaluate_finetuned": ("local_cuda", 1),
                    "export_model": (None, None)}
    assert snapshot.step_configurations["train_sft"].config.retry.max_retries == 3
