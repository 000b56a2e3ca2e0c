"""The pipeline on an object-store artifact store, for real: moto's S3 API server on loopback, ZenML's S3 artifact
store pointed at it (credentials in a ZenML secret), the stack registered as a user does (`zenml secret create`, then
`python -m llm_engineering.orchestration.stack --s3 ...`). A training process group SIGKILLed mid-run (a preempted
spot machine) resumes on rerun from the checkpoint it left in the bucket, says so on the console and in MLflow, and
ends with the model an uninterrupted run gives. (The one pipeline-level kill and resume: a local artifact store's
checkpoints are the default run's, tests/test_default_pipeline.py; kill and resume of training itself, SFT and DPO,
are tests/test_resume.py's.)"""

import os
import signal
import subprocess
import sys
import time

import mlflow
import pytest
import torch
from safetensors.torch import load_file
from zenml.client import Client
from zenml.enums import ExecutionStatus

from llm_engineering.export.export_dir import verify_manifest
from llm_engineering.orchestration.checkpoints import MANIFEST
from tests.pipeline_helpers import ZENML, run, run_pipeline, setup_repo, tiny_parameters, write_config
from tests.ui_helpers import s3_server

BUCKET = "llm-artifacts"
STEPS = ["load_dataset", "load_base_model", "inject_adapter", "train_sft", "merge_adapter", "evaluate_base",
         "evaluate_finetuned", "export_model"]


@pytest.fixture(scope="module")
def s3_repo(tmp_path_factory, shared_repo):
    """A repository of its own in the session's store (its S3 stack is its own), whose set-up points the shared MLflow
    tracker at its store: pointed back at the shared repository's when the module ends."""
    import boto3

    root = tmp_path_factory.mktemp("s3-repo")
    setup_repo(root)
    with s3_server(root / "moto.log") as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="moto-key", aws_secret_access_key="moto-secret",
                          region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        secret = run([ZENML, "secret", "create", "s3", "--aws_access_key_id=moto-key",
                      "--aws_secret_access_key=moto-secret"], root, 120)
        assert secret.returncode == 0, secret.stderr[-3000:]
        stack = run([sys.executable, "-m", "llm_engineering.orchestration.stack", "--root", str(root),
                     "--s3", f"s3://{BUCKET}/zenml", "--s3-endpoint-url", endpoint], root, 300)
        assert stack.returncode == 0, stack.stderr[-3000:]
        assert "stack 'llm_engineering_s3' active; artifacts in s3://llm-artifacts/zenml" in stack.stdout
        yield root, s3
    shared_repo.activate()


def keys(s3, prefix: str = "") -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_a_missing_secret_is_named_before_anything_is_registered(s3_repo):
    root, _ = s3_repo
    refused = run([sys.executable, "-m", "llm_engineering.orchestration.stack", "--root", str(root),
                   "--s3", "s3://other/zenml", "--s3-secret", "nope"], root, 300)
    assert refused.returncode != 0
    assert "the ZenML secret 'nope' with the S3 credentials does not exist: `zenml secret create nope" in refused.stderr
    active = run([ZENML, "stack", "get"], root, 120)
    assert "llm_engineering_s3" in active.stdout + active.stderr  # the refusal left the active stack alone


def test_a_run_preempted_mid_training_on_s3_resumes_from_the_bucket_and_its_artifacts_live_there(
        s3_repo, tiny_model_dir, monkeypatch):
    root, s3 = s3_repo
    parameters = tiny_parameters(tiny_model_dir, learning_rate=3e-3)
    parameters["train"].update(max_steps=40, checkpoint_steps=5, eval_steps=40)
    parameters["export"] = {"output_dir": "outputs/tiny-s3", "registered_model_name": "tiny-s3"}
    config = write_config(root / "s3.yaml", parameters)

    log = root / "preempted-run.log"
    with open(log, "w") as out:
        child = subprocess.Popen([ZENML, "pipeline", "run", "pipelines.finetune.finetune", "--config", str(config)],
                                 cwd=root, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while time.time() < deadline and child.poll() is None and not any(
            key.endswith(MANIFEST) for key in keys(s3, "zenml/sft-checkpoints/")):
        time.sleep(0.2)
    assert child.poll() is None, log.read_text()[-5000:]  # still training when its checkpoint reached the bucket
    os.killpg(child.pid, signal.SIGKILL)  # the whole process group, no clean-up: a preempted spot machine
    child.wait()
    assert child.returncode == -signal.SIGKILL
    # the scratch copy died with the machine; what survives is in the bucket, each checkpoint manifest-last
    left = [key for key in keys(s3, "zenml/sft-checkpoints/") if key.endswith(MANIFEST)]
    assert left, "no complete checkpoint reached the bucket before the kill"

    rerun = run_pipeline(root, config)
    assert rerun.returncode == 0, rerun.stderr[-5000:]
    assert "Resuming training from" in rerun.stdout + rerun.stderr
    monkeypatch.chdir(root)
    run_model = Client().get_pipeline("finetune").last_run
    steps = run_model.steps
    resumed = steps["train_sft"].run_metadata["train_resumed_from_step"]
    assert 5 <= resumed < 40 and resumed % 5 == 0
    assert {n: steps[n].status for n in STEPS[:3]} == {n: ExecutionStatus.CACHED for n in STEPS[:3]}
    assert keys(s3, "zenml/sft-checkpoints/") == []  # training finished: its checkpoints are removed
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / '.mlflow' / 'mlflow.db'}")
    [tracked] = client.search_runs([client.get_experiment_by_name("finetune").experiment_id],
                                   f'tags.mlflow.runName = "{run_model.name}"')
    assert tracked.data.metrics["train_resumed_from_step"] == resumed  # where it resumed, in MLflow too

    # every artifact of the run lives in the bucket
    stored = set(keys(s3, "zenml/"))
    for name in STEPS:
        for artifact in steps[name].outputs.values():
            uri = artifact[0].uri
            assert uri.startswith(f"s3://{BUCKET}/zenml/"), (name, uri)
            assert any(key.startswith(uri.removeprefix(f"s3://{BUCKET}/")) for key in stored), (name, uri)
    merged = steps["merge_adapter"].outputs["merged_model"][0].uri.removeprefix(f"s3://{BUCKET}/")
    assert f"{merged}/model.safetensors" in stored  # files as they are, not a tarball
    assert verify_manifest(root / "outputs" / "tiny-s3") == []  # the export, downloaded from the bucket, intact

    # only train.* changed (checkpoints off): the data, base model and adapter steps come from the cache, read back
    # from the bucket, and training the same 40 steps uninterrupted gives the model the preempted run ended with
    parameters["train"]["checkpoint_steps"] = None
    parameters["export"]["output_dir"] = "outputs/tiny-s3-uninterrupted"
    scratch = root / "tmp"  # the run's temporary directory: the models its steps read from the bucket land here
    scratch.mkdir()
    second = run_pipeline(root, write_config(root / "s3-uninterrupted.yaml", parameters), env={"TMPDIR": str(scratch)})
    assert second.returncode == 0, second.stderr[-5000:]
    assert list(scratch.rglob("*.safetensors")) == []  # each step's downloaded copy is gone when the step ends
    steps = Client().get_pipeline("finetune").last_run.steps
    assert {n: steps[n].status for n in STEPS[:3]} == {n: ExecutionStatus.CACHED for n in STEPS[:3]}
    assert steps["train_sft"].status == ExecutionStatus.COMPLETED
    assert steps["train_sft"].run_metadata["train_resumed_from_step"] == 0
    expected = load_file(root / "outputs" / "tiny-s3-uninterrupted" / "model.safetensors")
    actual = load_file(root / "outputs" / "tiny-s3" / "model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], atol=1e-5, rtol=1e-4)
