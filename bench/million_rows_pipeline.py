"""A user's 1M-row chat JSONL through `zenml pipeline run` (2 training steps): the dataset step's wall time and memory.

    python bench/million_rows_pipeline.py [--rows 1000000] [--out bench/results/million_rows_pipeline.json]

Writes the rows with bench/data_pipeline.py's generator (two-turn chat, a few hundred tokens each), then runs the
finetune pipeline on them in a fresh repository (own ZenML store and datasets cache: nothing cached) with the
default config's model, adapter and evaluation and `train.max_steps: 2`. A sampler reads /proc every 0.25 s for the
pipeline process and its children (the dataset step's map workers): resident memory split into anonymous (the heap)
and file-backed (pages of the memory-mapped Arrow files, which the kernel reclaims under pressure). Reported per
step from ZenML's own start and end times: wall seconds, peak RSS and peak anonymous memory above the process's
memory before the first step, and their rise within the step (steps share the local orchestrator's process).
Run it on an otherwise idle machine.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_pipeline import write_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def memory_kib(pid: int) -> tuple[int, int]:
    """(anonymous, file-backed) resident KiB of a process and all its descendants."""
    anon = file = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                anon = int(line.split()[1])
            elif line.startswith("RssFile:"):
                file = int(line.split()[1])
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return anon, file
    for child in children:
        a, f = memory_kib(int(child))
        anon, file = anon + a, file + f
    return anon, file


class Sampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.samples, self.running = pid, [], True

    def run(self):
        while self.running:
            self.samples.append((time.time(), *memory_kib(self.pid)))
            time.sleep(0.25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", default="bench/results/million_rows_pipeline.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="million-rows-") as scratch:
        repo = Path(scratch)
        data = repo / "chat.jsonl"
        start = time.perf_counter()
        write_jsonl(data, args.rows)
        print(f"wrote {args.rows} rows ({data.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - start:.0f}s",
              flush=True)
        shutil.copytree(ROOT / "data", repo / "data")  # the default config's eval and replay files
        document = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
        cfg = document["parameters"]["config"]
        cfg["data"] = {"source": "file", "path": str(data), "eval_rows": 20}
        cfg["train"].update(max_steps=2, eval_steps=2, checkpoint_steps=None, max_length=1024)
        cfg["export"].update(output_dir=str(repo / "outputs" / "export"), registered_model_name="million-rows")
        document["model"]["name"] = "million-rows"
        config = repo / "config.yaml"
        config.write_text(yaml.safe_dump(document))
        env = {**os.environ, "ZENML_CONFIG_PATH": str(repo / ".zenconfig"), "HF_HUB_OFFLINE": "1",
               "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(repo / "datasets-cache"),
               "ZENML_ANALYTICS_OPT_IN": "false", "LLM_ENGINEERING_PROGRESS": "lines"}
        subprocess.run([sys.executable, "-m", "llm_engineering.orchestration.stack", "--root", str(repo)], cwd=repo,
                       env=env, check=True, capture_output=True)

        process = subprocess.Popen([str(BIN / "zenml"), "pipeline", "run", "pipelines.finetune.finetune", "--config",
                                    str(config)], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        sampler = Sampler(process.pid)
        sampler.start()
        for line in process.stdout:
            print(line, end="", flush=True)
        returncode = process.wait()
        sampler.running = False
        if returncode != 0:
            raise SystemExit(f"the pipeline failed ({returncode})")
        steps = step_times(repo, env)

    first_start = min(start for start, _ in steps.values())
    before = [s for s in sampler.samples if s[0] < first_start] or sampler.samples[:1]
    floor_anon, floor_rss = before[-1][1], before[-1][1] + before[-1][2]
    result = {"rows": args.rows, "steps": {}}
    for name, (start, end) in sorted(steps.items(), key=lambda item: item[1][0]):
        inside = [s for s in sampler.samples if start <= s[0] <= end] or [min(
            sampler.samples, key=lambda s: abs(s[0] - start))]
        at_start = max([s for s in sampler.samples if s[0] <= start] or sampler.samples[:1])
        result["steps"][name] = {
            "seconds": round(end - start, 1),
            "rss_rise_in_step_gib": round((max(a + f for _, a, f in inside) - at_start[1] - at_start[2]) / 2**20, 3),
            "anon_rise_in_step_gib": round((max(a for _, a, _ in inside) - at_start[1]) / 2**20, 3),
            "peak_rss_above_start_gib": round((max(a + f for _, a, f in inside) - floor_rss) / 2**20, 3),
            "peak_anon_above_start_gib": round((max(a for _, a, _ in inside) - floor_anon) / 2**20, 3),
        }
    print(f"\n{'step':<22}{'seconds':>9}{'RSS GiB':>9}{'anon GiB':>10}{'RSS rise':>10}{'anon rise':>10}")
    for name, r in result["steps"].items():
        print(f"{name:<22}{r['seconds']:>9}{r['peak_rss_above_start_gib']:>9}{r['peak_anon_above_start_gib']:>10}"
              f"{r['rss_rise_in_step_gib']:>10}{r['anon_rise_in_step_gib']:>10}")
    print("GiB: peak above the process before the first step; rise: peak above the step's own start")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


def step_times(repo: Path, env: dict) -> dict[str, tuple[float, float]]:
    """Each step's start and end (epoch seconds) from the run's record in ZenML's store."""
    code = ("import json, datetime; from zenml.client import Client; "
            "run = Client().get_pipeline('finetune').last_run; "
            "utc = lambda t: t.replace(tzinfo=t.tzinfo or datetime.timezone.utc).timestamp(); "
            "print(json.dumps({n: [utc(s.start_time), utc(s.end_time)] for n, s in run.steps.items()}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True, check=True)
    return {name: tuple(times) for name, times in json.loads(done.stdout.strip().splitlines()[-1]).items()}


if __name__ == "__main__":
    main()
