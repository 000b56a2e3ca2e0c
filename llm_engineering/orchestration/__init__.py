"""The ZenML extension of the library, and the only package in it that imports zenml.

Importing it changes nothing. A process that runs a pipeline or a step calls `process.prepare_process()` first (the
pipeline modules and the step modules do, as do this package's commands): it quiets other libraries' noise, turns on
MLflow's system metrics and registers our materializers with ZenML.
"""
