"""How fast this machine runs the matmuls of one SFT step of the default config, shape by shape.

    python bench/matmul_shapes.py [--tokens 815]

The frozen projections of SmolLM2-135M (forward x W^T and input-gradient g W, in bf16) at one batch's token count,
and the LM head on the trained rows, against a 4096^2 square matmul. Their sum per step is the floor that no
elementwise or framework saving can go below (docs/performance.md). Prints a table, writes JSON.
"""

import argparse
import json
import time
from pathlib import Path

import torch

# SmolLM2-135M: hidden 576, MLP 1536, 9 query and 3 key/value heads of 64, 30 layers, 49,152-token vocabulary
PROJECTIONS = {"q_proj": (576, 576), "k_proj": (576, 192), "v_proj": (576, 192), "o_proj": (576, 576),
               "gate_proj": (576, 1536), "up_proj": (576, 1536), "down_proj": (1536, 576)}
LAYERS, VOCAB, HIDDEN = 30, 49152, 576


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
    bf16, m = torch.bfloat16, args.tokens
    rows, total = [], 0.0
    for name, (k, n) in PROJECTIONS.items():
        x, w, g = torch.randn(m, k, dtype=bf16), torch.randn(n, k, dtype=bf16), torch.randn(m, n, dtype=bf16)
        forward, backward = seconds(lambda: x @ w.t(), 20), seconds(lambda: g @ w, 20)
        flop = 2 * m * k * n
        rows.append({"matmul": name, "forward_ms": forward * 1e3, "backward_ms": backward * 1e3,
                     "gflops": 2 * flop / (forward + backward) / 1e9})
        total += LAYERS * (forward + backward)
    trained = max(1, int(m * args.trained))
    h, head = torch.randn(trained, HIDDEN, dtype=bf16), torch.randn(VOCAB, HIDDEN, dtype=bf16)
    g = torch.randn(trained, VOCAB, dtype=bf16)
    forward, backward = seconds(lambda: h @ head.t(), 5), seconds(lambda: g @ head, 5)
    rows.append({"matmul": "lm_head (trained rows)", "forward_ms": forward * 1e3, "backward_ms": backward * 1e3,
                 "gflops": 4 * trained * HIDDEN * VOCAB / (forward + backward) / 1e9})
    total += forward + backward
    square = torch.randn(4096, 4096, dtype=bf16)
    peak = 2 * 4096**3 / seconds(lambda: square @ square, 5) / 1e9
    print(f"{'matmul':<24}{'fwd ms':>9}{'bwd ms':>9}{'GFLOP/s':>9}")
    for row in rows:
        print(f"{row['matmul']:<24}{row['forward_ms']:>9.2f}{row['backward_ms']:>9.2f}{row['gflops']:>9.0f}")
    print(f"\n4096^2 square: {peak:.0f} GFLOP/s; these matmuls per step ({LAYERS} layers, {m} tokens, "
          f"{trained} trained rows): {total:.2f} s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"tokens": m, "trained_rows": trained, "square_gflops": peak,
                                          "step_matmul_seconds": total, "matmuls": rows}, indent=2))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
