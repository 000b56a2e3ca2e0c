"""How fast this machine runs the matmuls of one SFT step of the default config, shape by shape.

    python bench/matmul_shapes.py [--tokens 815]

The frozen projections of the embedded SmolLM2-135M (forward x W^T and input-gradient g W, in bf16) at one batch's
token count, and the LM head on the trained rows, against the bf16 matmul peak the SFT step's MFU uses
(`throughput.matmul_peak_gflops`). Their sum per step is the floor that no elementwise or framework saving can go
below (docs/performance.md). Prints a table, writes JSON.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def projections(config) -> dict[str, tuple[int, int]]:
    """(in, out) features of each frozen linear of one decoder layer of a Llama-style config."""
    hidden, kv = config.hidden_size, config.num_key_value_heads * (config.hidden_size // config.num_attention_heads)
    return {"q_proj": (hidden, hidden), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (hidden, hidden),
            "gate_proj": (hidden, config.intermediate_size), "up_proj": (hidden, config.intermediate_size),
            "down_proj": (config.intermediate_size, hidden)}


def seconds(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=815, help="tokens per step (default config: 8 rows of ~100)")
    parser.add_argument("--trained", type=float, default=0.42, help="share of positions that get a loss")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "matmul_shapes.json"))
    args = parser.parse_args()
    from transformers import AutoConfig

    from llm_engineering.model.embedded import embedded_model_dir
    from llm_engineering.training.throughput import matmul_peak_gflops

    config = AutoConfig.from_pretrained(embedded_model_dir())
    layers, vocab, hidden = config.num_hidden_layers, config.vocab_size, config.hidden_size
    bf16, m = torch.bfloat16, args.tokens
    rows, total = [], 0.0
    for name, (k, n) in projections(config).items():
        x, w, g = torch.randn(m, k, dtype=bf16), torch.randn(n, k, dtype=bf16), torch.randn(m, n, dtype=bf16)
        forward, backward = seconds(lambda: x @ w.t(), 20), seconds(lambda: g @ w, 20)
        flop = 2 * m * k * n
        rows.append({"matmul": name, "forward_ms": forward * 1e3, "backward_ms": backward * 1e3,
                     "gflops": 2 * flop / (forward + backward) / 1e9})
        total += layers * (forward + backward)
    trained = max(1, int(m * args.trained))
    h, head = torch.randn(trained, hidden, dtype=bf16), torch.randn(vocab, hidden, dtype=bf16)
    g = torch.randn(trained, vocab, dtype=bf16)
    forward, backward = seconds(lambda: h @ head.t(), 5), seconds(lambda: g @ head, 5)
    rows.append({"matmul": "lm_head (trained rows)", "forward_ms": forward * 1e3, "backward_ms": backward * 1e3,
                 "gflops": 4 * trained * hidden * vocab / (forward + backward) / 1e9})
    total += forward + backward
    peak = matmul_peak_gflops(bf16)
    print(f"{'matmul':<24}{'fwd ms':>9}{'bwd ms':>9}{'GFLOP/s':>9}")
    for row in rows:
        print(f"{row['matmul']:<24}{row['forward_ms']:>9.2f}{row['backward_ms']:>9.2f}{row['gflops']:>9.0f}")
    print(f"\nbf16 matmul peak (MFU's): {peak:.0f} GFLOP/s; these matmuls per step ({layers} layers, {m} tokens, "
          f"{trained} trained rows): {total:.2f} s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"tokens": m, "trained_rows": trained, "bf16_peak_gflops": peak,
                                          "step_matmul_seconds": total, "matmuls": rows}, indent=2))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
