"""The fine-tuning DAG: load dataset -> load base model -> inject adapter -> SFT -> merge -> evaluate -> export.

The evaluate step runs twice, on the base model and on the merged one, with the same settings: the base model's
evaluation comes from the cache while the base model, the eval rows and the eval settings stay the same.

    zenml pipeline run pipelines.finetune.finetune --config configs/default.yaml

The whole parameter tree (`parameters.config` in the YAML) is validated here, when ZenML compiles the pipeline, so a
bad key stops the run before any step starts. Each step gets only its own section: changing training hyperparameters
leaves the dataset, model and adapter-injection steps cached.
"""

from typing import Any, Optional

from zenml import pipeline

from llm_engineering.config import HarnessConfig, load_run_config
from llm_engineering.data.sources import inputs_digest
from llm_engineering.model.loading import checkpoint_stamp
from llm_engineering.orchestration.console_hooks import on_stage_end, on_stage_start
from llm_engineering.orchestration.process import prepare_process
from pipelines.checks import check_run, scoring_inputs
from steps.evaluate_model import evaluate_model
from steps.export_model import export_model
from steps.inject_adapter import inject_adapter
from steps.load_base_model import load_base_model
from steps.load_dataset import load_dataset
from steps.merge_adapter import merge_adapter
from steps.train_sft import train_sft


prepare_process()  # this module is what `zenml pipeline run` imports (a failed run ends with its reason)

@pipeline(name="finetune", on_start=on_stage_start, on_end=on_stage_end)  # the console's stage lines
def finetune(config: Optional[dict[str, Any]] = None) -> None:
    cfg = load_run_config(config)
    task_metric = check_run(cfg, "finetune")

    # Cache keys see parameters, not file contents: the digests make an edited data file or checkpoint rerun its step.
    checkpoint = checkpoint_stamp(cfg.model)
    train_dataset, eval_dataset, data_summary = load_dataset(
        data=cfg.data, tokenizer=cfg.model.tokenizer, max_length=cfg.train.max_length,
        inputs_digest=inputs_digest(cfg.data.source_list()) + checkpoint,
    )
    # after the rows are read and checked: a bad row stops the run before any model is loaded (or downloaded)
    base_model = load_base_model(model=cfg.model, checkpoint_digest=checkpoint, after="load_dataset")
    initial_adapter = inject_adapter(base_model=base_model, adapter=cfg.adapter)
    trained_adapter, training_metrics = train_sft(
        base_model=base_model,
        initial_adapter=initial_adapter,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_summary=data_summary,
        adapter=cfg.adapter,
        train=cfg.train,
    )
    merged_model, merge_report = merge_adapter(
        base_model=base_model, trained_adapter=trained_adapter, eval_dataset=eval_dataset, merge_config=cfg.merge
    )
    # the training rows enter the evaluations' cache key only where they are scored or name the metric (checks.py)
    scoring = scoring_inputs(cfg, eval_dataset, data_summary, task_metric)
    # the harness runs on the fine-tuned model only, so its settings stay out of the base evaluation's cache key
    base_settings = cfg.eval.model_copy(update={"harness": HarnessConfig()})
    base_evaluation = evaluate_model(base_model=base_model, evaluation=base_settings, **scoring, id="evaluate_base")
    finetuned_evaluation = evaluate_model(base_model=base_model, merged_model=merged_model, evaluation=cfg.eval,
                                          reference=base_evaluation, **scoring, id="evaluate_finetuned")
    export_model(
        merged_model=merged_model,
        trained_adapter=trained_adapter,
        base_model=base_model,
        eval_dataset=eval_dataset,
        data_summary=data_summary,
        training_metrics=training_metrics,
        merge_report=merge_report,
        base_evaluation=base_evaluation,
        finetuned_evaluation=finetuned_evaluation,
        export=cfg.export,
        run_config=cfg.model_dump(mode="json"),
    )
