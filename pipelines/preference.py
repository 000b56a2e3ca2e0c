"""The preference-tuning DAG: the finetune pipeline's stages with DPO, ORPO or GRPO in place of SFT.

    zenml pipeline run pipelines.preference.preference --config configs/dpo.yaml

load preference pairs -> load base model -> the start adapter (an earlier SFT run's, by registered model, ZenML
artifact or path; or a fresh one) -> DPO/ORPO/GRPO -> merge -> evaluate the base, the start and the tuned model on the
held-out pairs' chosen answers -> export + registry gate. The config schema, compile-time checks, steps and tracking
are the finetune pipeline's; the same bad config or bad row stops the run before any model loads.
"""

from typing import Any, Optional

from zenml import pipeline

from llm_engineering.config import HarnessConfig, load_run_config
from llm_engineering.data.sources import inputs_digest
from llm_engineering.model.loading import checkpoint_stamp
from llm_engineering.orchestration.console_hooks import on_stage_end, on_stage_start
from llm_engineering.orchestration.process import prepare_process
from llm_engineering.orchestration.start_adapter_lookup import check_start_adapter_source
from steps.chosen_conversations import chosen_conversations
from pipelines.checks import check_run, scoring_inputs
from steps.evaluate_model import evaluate_model
from steps.export_model import export_model
from steps.inject_adapter import inject_adapter
from steps.load_base_model import load_base_model
from steps.load_dataset import load_dataset
from steps.merge_adapter import merge_adapter
from steps.start_adapter import start_adapter
from steps.train_preference import train_preference


prepare_process()  # this module is what `zenml pipeline run` imports (a failed run ends with its reason)

@pipeline(name="preference", on_start=on_stage_start, on_end=on_stage_end)
def preference(config: Optional[dict[str, Any]] = None) -> None:
    cfg = load_run_config(config)
    check_start_adapter_source(cfg.preference.start_adapter)
    task_metric = check_run(cfg, "preference")

    checkpoint = checkpoint_stamp(cfg.model)
    train_pairs, eval_pairs, data_summary = load_dataset(
        data=cfg.data, tokenizer=cfg.model.tokenizer, max_length=cfg.train.max_length,
        inputs_digest=inputs_digest(cfg.data.source_list()) + checkpoint, rows="preference",
    )
    eval_dataset = chosen_conversations(pairs=eval_pairs, tokenizer=cfg.model.tokenizer,
                                        max_length=cfg.train.max_length, truncate=cfg.data.truncate)
    # after the rows are read and checked: a bad row stops the run before any model loads
    base_model = load_base_model(model=cfg.model, checkpoint_digest=checkpoint, after="load_dataset")
    if cfg.preference.start_adapter:
        initial_adapter = start_adapter(source=cfg.preference.start_adapter)
    else:
        initial_adapter = inject_adapter(base_model=base_model, adapter=cfg.adapter)
    trained_adapter, training_metrics = train_preference(
        base_model=base_model, initial_adapter=initial_adapter, train_dataset=train_pairs, eval_dataset=eval_pairs,
        data_summary=data_summary, adapter=cfg.adapter, train=cfg.train, preference=cfg.preference,
    )
    merged_model, merge_report = merge_adapter(base_model=base_model, trained_adapter=trained_adapter,
                                               eval_dataset=eval_dataset, merge_config=cfg.merge)
    scoring = scoring_inputs(cfg, eval_dataset, data_summary, task_metric)
    plain = cfg.eval.model_copy(update={"harness": HarnessConfig()})  # the harness runs on the tuned model only
    base_evaluation = evaluate_model(base_model=base_model, evaluation=plain, **scoring, id="evaluate_base")
    start_evaluation = None
    if cfg.preference.start_adapter:  # what the preference tuning started from (the SFT model), scored the same way
        start_model, _ = merge_adapter(base_model=base_model, trained_adapter=initial_adapter,
                                       eval_dataset=eval_dataset, merge_config=cfg.merge, id="merge_start")
        start_evaluation = evaluate_model(base_model=base_model, merged_model=start_model, evaluation=plain,
                                          role="start", reference=base_evaluation, **scoring, id="evaluate_start")
    finetuned_evaluation = evaluate_model(base_model=base_model, merged_model=merged_model, evaluation=cfg.eval,
                                          reference=base_evaluation, **scoring, id="evaluate_finetuned")
    export_model(
        merged_model=merged_model, trained_adapter=trained_adapter, base_model=base_model, eval_dataset=eval_dataset,
        data_summary=data_summary, training_metrics=training_metrics, merge_report=merge_report,
        base_evaluation=base_evaluation, finetuned_evaluation=finetuned_evaluation, export=cfg.export,
        run_config=cfg.model_dump(mode="json"), start_evaluation=start_evaluation, method=cfg.preference.method,
    )
