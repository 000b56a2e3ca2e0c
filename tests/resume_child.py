"""Child process for the kill/resume tests: train the tiny adapter (SFT, or DPO/ORPO when the spec has a
`preference` section: DPO, ORPO or GRPO) with durable checkpoints, print the result."""

import json
import sys
from pathlib import Path

from llm_engineering.config import AdapterConfig, ModelConfig, PreferenceConfig, TrainConfig
from llm_engineering.training.preference import train_preference
from llm_engineering.training.sft import train_adapter

if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    common = (ModelConfig(**spec["model"]), AdapterConfig(**spec["adapter"]), TrainConfig(**spec["train"]))
    rest = (Path(spec["initial"]), spec["train_rows"], spec["eval_rows"], Path(spec["output"]))
    if "preference" in spec:
        result = train_preference(*common, PreferenceConfig(**spec["preference"]), *rest,
                                  checkpoint_dir=Path(spec["checkpoints"]))
    else:
        result = train_adapter(*common, *rest, checkpoint_dir=Path(spec["checkpoints"]))
    print(json.dumps({"resumed_from_step": result.resumed_from_step, "steps": result.steps}))
