"""A ZenML step operator that runs each step it is given as its own process on this machine, pinned to GPUs.

Why: a step that loads a model onto a GPU inside the orchestrator's process leaves its CUDA context and cached
allocations behind for the next step (the ZenML LLM projects empty caches by hand in every step). A child process
per step gives all of it back when the step ends, and CUDA_VISIBLE_DEVICES pins the step to the devices configured
for it: `gpus` on the component or in the step's settings, else the first `ResourceSettings.gpu_count` devices.
It is also how the step-operator path is exercised for real on a machine without a cloud (on CPU it pins nothing
unless told).

    zenml step-operator flavor register llm_engineering.orchestration.local_cuda_step_operator.LocalCudaStepOperatorFlavor
    zenml step-operator register local_cuda --flavor=local_cuda [--gpus=0]
    # then, per step in the run config:  steps: {train_sft: {step_operator: local_cuda}}
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Dict, List, Optional, Type, cast

from zenml.config.base_settings import BaseSettings
from zenml.step_operators import BaseStepOperator, BaseStepOperatorConfig, BaseStepOperatorFlavor

logger = logging.getLogger(__name__)

FLAVOR = "local_cuda"


class LocalCudaStepOperatorSettings(BaseSettings):
    gpus: Optional[str] = None  # e.g. "0" or "2,3"; overrides the component's


class LocalCudaStepOperatorConfig(BaseStepOperatorConfig, LocalCudaStepOperatorSettings):
    @property
    def is_local(self) -> bool:
        return True


class LocalCudaStepOperator(BaseStepOperator):
    @property
    def config(self) -> LocalCudaStepOperatorConfig:
        return cast(LocalCudaStepOperatorConfig, self._config)

    @property
    def settings_class(self) -> Optional[Type[BaseSettings]]:
        return LocalCudaStepOperatorSettings

    def devices(self, info) -> Optional[str]:
        settings = cast(LocalCudaStepOperatorSettings, self.get_settings(info))
        if settings.gpus is not None:
            return settings.gpus
        count = info.config.resource_settings.gpu_count
        return ",".join(str(i) for i in range(count)) if count else None

    def launch(self, info, entrypoint_command: List[str], environment: Dict[str, str]) -> None:
        """Run the step's entrypoint in a child process with this Python and wait for it (ZenML's legacy
        synchronous interface); a non-zero exit fails the step."""
        command = [sys.executable if part == "python" and i == 0 else part for i, part in enumerate(entrypoint_command)]
        env = {**os.environ, **environment}
        devices = self.devices(info)
        if devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = devices
        logger.info("Running step %s in its own process (CUDA_VISIBLE_DEVICES=%s)", info.pipeline_step_name,
                    env.get("CUDA_VISIBLE_DEVICES", "<inherited>"))
        finished = subprocess.run(command, env=env)
        if finished.returncode != 0:
            raise RuntimeError(f"step {info.pipeline_step_name} failed in its step-operator process "
                               f"(exit code {finished.returncode}); its log is in the step's logs")


class LocalCudaStepOperatorFlavor(BaseStepOperatorFlavor):
    @property
    def name(self) -> str:
        return FLAVOR

    @property
    def config_class(self) -> Type[LocalCudaStepOperatorConfig]:
        return LocalCudaStepOperatorConfig

    @property
    def implementation_class(self) -> Type[LocalCudaStepOperator]:
        return LocalCudaStepOperator
