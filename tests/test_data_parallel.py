"""Data-parallel SFT for real: `torchrun` with 2 CPU processes (gloo) against one process with the same global batch.
Each rank trains on its own shard, only rank 0 writes the adapter, and the result equals the single-process one."""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llm_engineering.config import AdapterConfig, ModelConfig, QuantizationConfig
from llm_engineering.model.adapter import inject_adapter, save_adapter
from llm_engineering.model.loading import load_model
from tests.pipeline_helpers import free_port_env, run

CHILD = Path(__file__).with_name("ddp_child.py")
TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.fixture()
def initial_adapter(tiny_model_dir, tmp_path) -> Path:
    model_cfg = ModelConfig(source="local", name_or_path=str(tiny_model_dir), dtype="float32",
                            quantization=QuantizationConfig(method="none"))
    model, _ = inject_adapter(load_model(model_cfg), AdapterConfig(r=4, alpha=8, dropout=0.0,
                                                                   target_modules="all-linear"))
    save_adapter(model, tmp_path / "initial")
    return tmp_path / "initial"


def test_two_gloo_ranks_train_disjoint_shards_and_match_one_process(tiny_model_dir, initial_adapter, tmp_path):
    env = {"OMP_NUM_THREADS": "1", **free_port_env()}
    single = run([sys.executable, str(CHILD), str(tiny_model_dir), str(initial_adapter), str(tmp_path / "single"), "4"],
                 tmp_path, 600, env)
    assert single.returncode == 0, single.stderr[-5000:]
    ddp = run([str(TORCHRUN), "--nproc_per_node", "2", "--master_port", env["MASTER_PORT"], str(CHILD),
               str(tiny_model_dir), str(initial_adapter), str(tmp_path / "ddp"), "2"], tmp_path, 600, env)
    assert ddp.returncode == 0, ddp.stderr[-5000:]

    one = json.loads((tmp_path / "single" / "rank0.json").read_text())
    ranks = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and one["world_size"] == 1
    batches = [[set(map(tuple, batch)) for batch in r["train_batches"]] for r in ranks]
    single_batches = [set(map(tuple, batch)) for batch in one["train_batches"]]
    assert len(batches[0]) == len(batches[1]) == len(single_batches) == 3
    for step, (shard0, shard1) in enumerate(zip(*batches)):
        assert len(shard0) == len(shard1) == 2 and not shard0 & shard1  # each rank its own shard...
        assert shard0 | shard1 == single_batches[step]  # ...together the single process's global batch
    assert "adapter_model.safetensors" in ranks[0]["wrote"] and ranks[1]["wrote"] == []  # only rank 0 writes

    assert len(ranks[0]["losses"]) == 3
    assert ranks[0]["losses"] == pytest.approx(one["losses"], rel=1e-4)
    trained = load_file(tmp_path / "ddp" / "rank0" / "adapter_model.safetensors")
    reference = load_file(tmp_path / "single" / "rank0" / "adapter_model.safetensors")
    start = load_file(initial_adapter / "adapter_model.safetensors")
    assert any(not torch.equal(trained[k], start[k]) for k in trained)  # it trained
    for name, tensor in reference.items():
        torch.testing.assert_close(trained[name], tensor, rtol=1e-4, atol=1e-5)


def test_a_failing_rank_is_reported_by_name(tiny_model_dir, tmp_path):
    """A rank's error comes back to the caller as one message that names the rank and the error."""
    from llm_engineering.config import TrainConfig
    from llm_engineering.training import data_parallel

    model_cfg = ModelConfig(source="local", name_or_path=str(tiny_model_dir), dtype="float32",
                            quantization=QuantizationConfig(method="none"))
    rows = [{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}] * 4
    with pytest.raises(data_parallel.DataParallelError, match=r"failed on rank\d: .*no-such-adapter"):
        data_parallel.train(model_cfg, AdapterConfig(r=4, target_modules="all-linear"),
                            TrainConfig(num_processes=2, max_steps=1, mixed_precision="no"),
                            tmp_path / "no-such-adapter", rows, rows, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_pipeline_trains_on_two_ranks_and_tracks_it_as_usual(shared_repo, tiny_model_dir, monkeypatch):
    """`train.num_processes: 2` in the run config: the SFT step launches two gloo ranks that share the training rows,
    rank 0 streams the loss into the run's MLflow run, and the pipeline goes on to merge and export as usual."""
    import mlflow
    from zenml.client import Client
    from zenml.enums import ExecutionStatus

    from tests.pipeline_helpers import run_pipeline, tiny_parameters, write_config

    root, uri = shared_repo
    shared_repo.activate()
    parameters = tiny_parameters(tiny_model_dir)
    parameters["data"] = {"num_rows": 20, "eval_rows": 4}
    # one epoch over the training rows, 2 rows per rank per step
    parameters["train"].update(num_processes=2, per_device_batch_size=2, max_steps=None, num_epochs=1.0)
    parameters["export"]["output_dir"] = "outputs/tiny-ddp"
    config = write_config(root / "ddp.yaml", parameters, enable_cache=False)
    done = run_pipeline(root, config, env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]

    run = Client().get_pipeline("finetune").last_run
    assert run.status == ExecutionStatus.COMPLETED
    sft = run.steps["train_sft"].run_metadata
    train_rows = run.steps["load_dataset"].outputs["train_dataset"][0].load()
    assert sft["train_world_size"] == 2
    assert sft["train_steps"] == len(train_rows) // 4  # a global batch of 4 rows: the epoch is split between ranks
    # both ranks' tokens are counted, and together they are every training row's tokens once
    assert sft["train_tokens"] == sum(len(ids) for ids in train_rows["input_ids"])

    client = mlflow.MlflowClient(tracking_uri=uri)
    [mlflow_run] = client.search_runs([client.get_experiment_by_name("finetune").experiment_id],
                                      f'tags.mlflow.runName = "{run.name}"')
    losses = client.get_metric_history(mlflow_run.info.run_id, "train_loss")
    assert sorted(m.step for m in losses) == list(range(1, sft["train_steps"] + 1))  # from rank 0, once per step
    assert mlflow_run.data.metrics["train_world_size"] == 2
    assert (root / "outputs" / "tiny-ddp" / "model.safetensors").is_file()


def test_more_processes_than_visible_gpus_is_refused_before_anything_loads(monkeypatch):
    """On a CUDA machine each rank needs its own GPU (simulated: this machine has none)."""
    from llm_engineering.config import TrainConfig
    from llm_engineering.training import data_parallel

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with pytest.raises(data_parallel.DataParallelError,
                       match=r"train.num_processes is 2 but this process sees 1 GPU\(s\) \(CUDA_VISIBLE_DEVICES=3\)"):
        data_parallel.check_devices(TrainConfig(num_processes=2))
    data_parallel.check_devices(TrainConfig(num_processes=1))  # one process: the step's own device
