"""ZenML's Comet experiment tracker with an offline mode, for air-gapped machines and tests.

ZenML's own flavor always opens an online `comet_ml.Experiment` and needs an API key in its config. This flavor is
the same tracker (one Comet experiment per step, named `<run>_<step>`, tagged with run and pipeline) plus:
- `offline: true` writes Comet's offline archive (a zip per step) under `offline_directory`, uploadable later with
  `comet upload <zip>`; no key and no network needed;
- online, the key comes from the config (a ZenML secret reference such as `{{comet.api_key}}`) or from the
  COMET_API_KEY environment variable, never from a file in the repository.
Register and use it with `python -m llm_engineering.orchestration.stack --comet [--comet-offline DIR]`.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Type, Union, cast

from zenml.integrations.comet.experiment_trackers.comet_experiment_tracker import CometExperimentTracker
from zenml.integrations.comet.flavors.comet_experiment_tracker_flavor import (
    CometExperimentTrackerConfig,
    CometExperimentTrackerFlavor,
)
from zenml.utils.secret_utils import SecretField

FLAVOR = "llm_comet"


class CometTrackerConfig(CometExperimentTrackerConfig):
    api_key: Optional[str] = SecretField(default=None)
    offline: bool = False
    offline_directory: Optional[str] = None


class CometTracker(CometExperimentTracker):
    @property
    def config(self) -> CometTrackerConfig:
        return cast(CometTrackerConfig, self._config)

    def prepare_step_run(self, info) -> None:
        if not self.config.offline and not (self.config.api_key or os.environ.get("COMET_API_KEY")):
            raise ValueError(f"Comet tracker {self.name!r} is online but has no API key: set it from a ZenML secret "
                             "(`api_key: {{comet.api_key}}`), export COMET_API_KEY, or set offline: true")
        settings = self.get_settings(info)
        self._initialize_comet(run_name=settings.run_name or f"{info.run_name}_{info.pipeline_step_name}",
                               tags=settings.tags + [info.run_name, info.pipeline.name], settings=settings.settings)

    def _initialize_comet(self, run_name: str, tags: List[str], settings: Union[Dict[str, Any], None] = None) -> None:
        import comet_ml

        quiet = {"log_code": False, "log_git_metadata": False, "log_git_patch": False, "display_summary_level": 0,
                 "auto_output_logging": False, **(settings or {})}  # no source or git diff leaves the machine
        common = {"workspace": self.config.workspace, "project_name": self.config.project_name, **quiet}
        if self.config.offline:
            directory = self.config.offline_directory or os.path.join(os.getcwd(), ".comet")
            os.makedirs(directory, exist_ok=True)
            self.experiment = comet_ml.OfflineExperiment(offline_directory=directory, **common)
        else:
            self.experiment = comet_ml.Experiment(api_key=self.config.api_key or os.environ["COMET_API_KEY"], **common)
        self.experiment.set_name(run_name)
        self.experiment.add_tags(tags)

    def get_step_run_metadata(self, info) -> Dict[str, Any]:
        if self.config.offline:  # no URL exists until the archive is uploaded
            return {"comet_experiment_name": self.experiment.name if self.experiment else None,
                    "comet_offline_directory": self.config.offline_directory}
        return super().get_step_run_metadata(info)


class CometTrackerFlavor(CometExperimentTrackerFlavor):
    @property
    def name(self) -> str:
        return FLAVOR

    @property
    def config_class(self) -> Type[CometTrackerConfig]:
        return CometTrackerConfig

    @property
    def implementation_class(self) -> Type[CometTracker]:
        return CometTracker
