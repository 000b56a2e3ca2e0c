"""Dataset-stage scale: wall time, rows/s, peak RSS and Arrow cache size of `prepare` on real-looking chat JSONL.

    python bench/data_pipeline.py [--sizes 10000 100000 1000000] [--num-proc 2] [--baseline-ref c77171a]
                                  [--out bench/results/data_pipeline.json]

Writes one JSONL of two-turn chat rows (system, user, assistant, user, assistant; a few hundred tokens each, varied
words, seeded) per size, then runs `prepare` (read, normalise, validate, template, tokenize, mask, dedupe, split) on
each in its own process, with a fresh datasets cache, so sizes do not share memory or cached work. Each process
reports its wall time, its peak RSS above its own start (after imports and the tokenizer, whose load peak is reset
first; this counts the pages of memory-mapped Arrow files it touched), its own peak anonymous memory (sampled every
0.1 s), the peak anonymous memory of it and its map workers together (the memory the step really needs), the
largest worker's peak RSS, and the size of the Arrow cache written.
At 100k it also runs num_proc 1 for the speed-up, and first `--synthetic` rows of the built-in task.
`--baseline-ref` runs the same sizes (up to 100k) with the dataset code of an earlier commit (a git worktree) for
comparison. Run it alone on the machine: two processes on two cores slow each other about tenfold.
"""

import argparse
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the model data train token answer question system user value table report order city river garden "
         "window market engine signal network energy history science music paper letter family friend morning "
         "evening summer winter number method result reason example problem support service account project "
         "quickly carefully usually often never always because although therefore however meanwhile").split()


def sentence(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    return text[0].upper() + text[1:] + rng.choice([".", "?", "!", ". Also, ü and é; “quoted”."])


def chat_row(rng: random.Random) -> dict:
    turn = lambda n: " ".join(sentence(rng, rng.randint(8, 16)) for _ in range(n))  # noqa: E731
    return {"messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": turn(rng.randint(2, 4))},
        {"role": "assistant", "content": turn(rng.randint(4, 8))},
        {"role": "user", "content": turn(rng.randint(1, 3))},
        {"role": "assistant", "content": turn(rng.randint(3, 6))},
    ]}


def write_jsonl(path: Path, rows: int) -> None:
    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(rows):
            f.write(json.dumps(chat_row(rng), ensure_ascii=False) + "\n")


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def anon_kib(pid: int) -> int:
    """Anonymous resident memory of a process and all its descendants (the heap: file-backed pages of the
    memory-mapped Arrow files are left out, since the kernel drops them under pressure)."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                total += int(line.split()[1])
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return total
    return total + sum(anon_kib(int(c)) for c in children)


class AnonPeak(threading.Thread):
    """Samples anon_kib of this process tree every 0.1 s; `peak` is the largest sum seen, `own_peak` the largest
    anonymous memory of this process alone."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.own_peak, self.running = 0, 0, True

    def run(self):
        while self.running:
            self.peak = max(self.peak, anon_kib(os.getpid()))
            self.own_peak = max(self.own_peak, status_kib("RssAnon"))
            time.sleep(0.1)


def child(path: str, num_proc: int) -> None:
    """One measurement, in its own process (the caller set HF_DATASETS_CACHE and the code on PYTHONPATH)."""
    from llm_engineering.config import DataConfig, ModelConfig
    from llm_engineering.data.prepare import prepare
    from llm_engineering.model.loading import load_tokenizer

    tokenizer = load_tokenizer(ModelConfig())
    extra = {"num_proc": num_proc} if "num_proc" in DataConfig.model_fields else {}
    if path.startswith("synthetic:"):
        cfg = DataConfig(num_rows=int(path.split(":")[1]), eval_rows=100, **extra)
    else:
        cfg = DataConfig(source="file", path=path, eval_rows=100, **extra)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: the tokenizer's load peak is not counted
    start_kib, start_anon, start_own = status_kib("VmRSS"), anon_kib(os.getpid()), status_kib("RssAnon")
    sampler = AnonPeak()
    sampler.start()
    start = time.perf_counter()
    data = prepare(cfg, tokenizer, 2048)
    seconds = time.perf_counter() - start
    sampler.running = False
    rows = data.report.rows_read
    print(json.dumps({
        "rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds),
        "peak_rss_above_start_gib": round((status_kib("VmHWM") - start_kib) / 2**20, 3),
        "peak_anon_all_processes_above_start_gib": round((sampler.peak - start_anon) / 2**20, 3),
        "peak_anon_main_above_start_gib": round((sampler.own_peak - start_own) / 2**20, 3),
        "largest_worker_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 3),
        "train_tokens_mean": data.report.stats.get("train_tokens_mean"),
    }))


def measure(path: Path, num_proc: int, code: Path) -> dict:
    cache = Path(tempfile.mkdtemp(prefix="bench-datasets-cache-"))
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, __file__, "--child", str(path), "--num-proc", str(num_proc)], cwd=code,
                          env=env, capture_output=True, text=True)
    cache_bytes = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    shutil.rmtree(cache, ignore_errors=True)
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "arrow_cache_gib": round(cache_bytes / 2**30, 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--baseline-ref", default=None, help="also measure this commit's dataset code (<= 100k rows)")
    parser.add_argument("--synthetic", type=int, default=100_000, help="also this many synthetic booking rows (0: no)")
    parser.add_argument("--out", default="bench/results/data_pipeline.json")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.num_proc)

    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    variants = []  # (label, code dir, num_proc, sizes)
    if args.baseline_ref:
        old = work / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), args.baseline_ref], cwd=ROOT, check=True,
                       capture_output=True)
        variants.append((f"before ({args.baseline_ref})", old, 1, [s for s in args.sizes if s <= 100_000]))
    variants.append((f"ours, num_proc {args.num_proc}", ROOT, args.num_proc, args.sizes))
    if 100_000 in args.sizes and args.num_proc > 1:
        variants.append(("ours, num_proc 1", ROOT, 1, [100_000]))

    results = []
    try:
        if args.synthetic:  # the built-in task's short rows (~100 tokens), the figure the README had before
            for label, code, num_proc, _ in variants:
                result = {"variant": label + ", synthetic rows", "num_proc": num_proc,
                          **measure(f"synthetic:{args.synthetic}", num_proc, code)}
                results.append(result)
                print(json.dumps(result), flush=True)
        for size in sorted(args.sizes):
            path = work / f"chat-{size}.jsonl"
            write_jsonl(path, size)
            for label, code, num_proc, sizes in variants:
                if size in sizes:
                    result = {"variant": label, "num_proc": num_proc, "file_gib": round(path.stat().st_size / 2**30, 3),
                              **measure(str(path), num_proc, code)}
                    results.append(result)
                    print(json.dumps(result), flush=True)
            path.unlink()
    finally:
        if args.baseline_ref:
            subprocess.run(["git", "worktree", "remove", "--force", str(work / "baseline")], cwd=ROOT)
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'variant':<34}{'rows':>9}{'seconds':>9}{'rows/s':>8}{'RSS GiB':>9}{'main anon':>10}{'all anon':>9}"
          f"{'worker GiB':>11}{'cache GiB':>10}")
    for r in results:
        if "error" in r:
            print(f"{r['variant']:<34} failed: {r['error'][-200:]}")
            continue
        print(f"{r['variant']:<34}{r['rows']:>9}{r['seconds']:>9}{r['rows_per_s']:>8}{r['peak_rss_above_start_gib']:>9}"
              f"{r.get('peak_anon_main_above_start_gib', '-'):>10}{r['peak_anon_all_processes_above_start_gib']:>9}"
              f"{r['largest_worker_peak_rss_gib']:>11}"
              f"{r['arrow_cache_gib']:>10}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                          "cores": os.cpu_count(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
