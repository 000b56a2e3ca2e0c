"""Print what `zenml pipeline run` would do with a run config on a stack, without running anything:

    python -m pipelines.plan configs/kubernetes_run.yaml --stack kubernetes_stack
"""

import argparse
import json
import sys
from pathlib import Path

from llm_engineering.orchestration.stack_plan import compile_plan
from pipelines.finetune import finetune


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="run config (YAML)")
    parser.add_argument("--stack", help="a registered stack (default: the active one)")
    args = parser.parse_args(argv)
    if not args.config.is_file():
        print(f"error: {args.config}: no such run config", file=sys.stderr)
        return 2
    print(json.dumps(compile_plan(finetune, args.config, args.stack), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
