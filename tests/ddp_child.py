"""Train the tiny model's adapter with our SFT path, alone or as one rank of `torchrun` (gloo on CPU), and record
what this process saw and wrote: run by tests/test_data_parallel.py."""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_engineering.config import AdapterConfig, DataConfig, ModelConfig, QuantizationConfig, TrainConfig  # noqa: E402
from llm_engineering.data import collate  # noqa: E402
from llm_engineering.data.prepare import prepare  # noqa: E402
from llm_engineering.model.loading import load_tokenizer  # noqa: E402
from llm_engineering.training.sft import train_adapter  # noqa: E402


def main(model_dir: str, initial_adapter: str, out: str, batch: int) -> None:
    rank = int(os.environ.get("RANK", 0))
    model_cfg = ModelConfig(source="local", name_or_path=model_dir, dtype="float32",
                            quantization=QuantizationConfig(method="none"))
    # 4 training rows = one global batch, so every step sees all of them in both set-ups: the same gradient
    data = prepare(DataConfig(num_rows=8, eval_rows=4), load_tokenizer(model_cfg), 160)
    seen = []
    original = collate.PackedCollator.__call__

    def recording(self, examples, *args, **kwargs):  # which rows this rank batched (train and eval)
        seen.append([tuple(e["input_ids"]) for e in examples])  # the whole row: two rows may end alike
        return original(self, examples, *args, **kwargs)

    collate.PackedCollator.__call__ = recording
    train = TrainConfig(learning_rate=1e-2, max_steps=3, per_device_batch_size=batch, logging_steps=1, eval_steps=100,
                        max_length=160, mixed_precision="no", checkpoint_steps=None, warmup_ratio=0.0)
    adapter = AdapterConfig(r=4, alpha=8, dropout=0.0, target_modules="all-linear")
    output = Path(out) / f"rank{rank}"
    result = train_adapter(model_cfg, adapter, train, Path(initial_adapter), data.train, data.eval, output)
    train_rows = {tuple(row["input_ids"]) for row in data.train}
    Path(out, f"rank{rank}.json").write_text(json.dumps({
        "world_size": int(os.environ.get("WORLD_SIZE", 1)),
        "train_batches": [sorted(batch) for batch in seen if set(batch) <= train_rows],  # eval batches left out
        "losses": [e["loss"] for e in result.log_history if "loss" in e], "wrote": sorted(
            p.name for p in output.glob("*")) if output.exists() else []}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
