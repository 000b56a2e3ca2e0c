"""Preemption: SIGKILL the training process for real mid-run, rerun, and it resumes from the last durable checkpoint
instead of starting over, ending with the adapter an uninterrupted run produces."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from llm_engineering.config import AdapterConfig, DataConfig
from llm_engineering.data.preference import PREFERENCE_ROWS
from tests.conftest import prepared
from llm_engineering.model.adapter import inject_adapter, save_adapter
from llm_engineering.model.loading import load_model
from llm_engineering.training.resume import last_checkpoint

CHILD = Path(__file__).with_name("resume_child.py")
STEPS, EVERY = 24, 6


def spec(tmp_path, model_cfg, name, preference=None, steps=STEPS, every=EVERY):
    adapter = AdapterConfig(r=4, alpha=8, dropout=0.0, target_modules="all-linear")
    initial = tmp_path / "initial"
    if not initial.exists():
        save_adapter(inject_adapter(load_model(model_cfg), adapter)[0], initial)
    if preference:
        split = prepared(DataConfig(task="booking_preference", num_rows=72, eval_rows=4), kind=PREFERENCE_ROWS)
    else:
        split = prepared(DataConfig(num_rows=72, eval_rows=4))
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({
        "model": model_cfg.model_dump(), "adapter": adapter.model_dump(),
        "train": {"learning_rate": 2e-3, "max_steps": steps, "per_device_batch_size": 4, "logging_steps": 4,
                  "eval_steps": steps, "max_length": 128, "mixed_precision": "no", "checkpoint_steps": every},
        "initial": str(initial), "train_rows": split.train.to_list(), "eval_rows": split.eval.to_list(),
        "output": str(tmp_path / name / "adapter"), "checkpoints": str(tmp_path / name / "checkpoints"),
        **({"preference": preference} if preference else {}),
    }))
    return path


def train(spec_path) -> dict:
    done = subprocess.run([sys.executable, str(CHILD), str(spec_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def kill_resume_and_compare(tmp_path, model_cfg, preference=None, steps=STEPS, every=EVERY):
    reference = train(spec(tmp_path, model_cfg, "uninterrupted", preference, steps, every))
    assert reference == {"resumed_from_step": 0, "steps": steps}

    killed_spec = spec(tmp_path, model_cfg, "killed", preference, steps, every)
    checkpoints = tmp_path / "killed" / "checkpoints"
    child = subprocess.Popen([sys.executable, str(CHILD), str(killed_spec)], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while last_checkpoint(checkpoints) is None and time.time() < deadline and child.poll() is None:
        time.sleep(0.2)
    os.killpg(child.pid, signal.SIGKILL)  # no clean-up: as a preempted VM
    child.wait()
    saved = last_checkpoint(checkpoints)
    assert saved is not None and child.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "adapter").exists()

    resumed = train(killed_spec)
    assert every <= resumed["resumed_from_step"] < steps and resumed["steps"] == steps
    assert not checkpoints.exists()  # removed once the trained adapter exists
    expected = load_file(tmp_path / "uninterrupted" / "adapter" / "adapter_model.safetensors")
    actual = load_file(tmp_path / "killed" / "adapter" / "adapter_model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], atol=1e-5, rtol=1e-4)


def test_killed_training_resumes_from_its_last_checkpoint(tmp_path, tiny_model_cfg):
    kill_resume_and_compare(tmp_path, tiny_model_cfg)


def test_killed_dpo_resumes_from_its_last_checkpoint_with_the_same_reference(tmp_path, tiny_model_cfg):
    # the reference is TRL's copy of the start adapter: a resumed run must not take the checkpoint's policy for it
    kill_resume_and_compare(tmp_path, tiny_model_cfg, {"method": "dpo", "beta": 0.1}, steps=8, every=4)


def test_killed_grpo_resumes_from_its_last_checkpoint_and_samples_what_an_uninterrupted_run_samples(
        tmp_path, tiny_model_cfg):
    # sampled completions: the resumed run must restore the generator's random state as well as the weights and the
    # optimizer, or it would sample other completions, score other rewards and end with another adapter
    grpo = {"method": "grpo", "rewards": [{"function": "json_fields"}, {"function": "stops", "weight": 0.1}],
            "num_generations": 4, "max_completion_length": 8}
    kill_resume_and_compare(tmp_path, tiny_model_cfg, grpo, steps=6, every=2)
