"""Child process for the kill/resume test: train the tiny adapter with durable checkpoints, print the result."""

import json
import sys
from pathlib import Path

from llm_engineering.config import AdapterConfig, ModelConfig, TrainConfig
from llm_engineering.model.training import train_adapter

if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    result = train_adapter(
        ModelConfig(**spec["model"]), AdapterConfig(**spec["adapter"]), TrainConfig(**spec["train"]),
        Path(spec["initial"]), spec["train_rows"], spec["eval_rows"], Path(spec["output"]),
        checkpoint_dir=Path(spec["checkpoints"]),
    )
    print(json.dumps({"resumed_from_step": result.resumed_from_step, "steps": result.steps}))
