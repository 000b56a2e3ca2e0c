"""Is the merge faithful? The merged model's next-token logits against the adapter model's, on held-out prompts:
max |Δlogit| for the merge itself, the mean per-token KL divergence (and max |Δlogit|, top-1 agreement) for the
weights as saved. Over a threshold: MergeFidelityError, before anything is exported."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from llm_engineering.config import MergeConfig
from llm_engineering.model.precision import resolve_dtype


class MergeFidelityError(RuntimeError):
    """The merged model's logits differ from the adapter model's by more than the configured threshold."""


@dataclass(frozen=True)
class FidelityReport:
    prompts: int
    tokens: int
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    top1_agreement: float
    base_weights: str
    comparison: str
    saved_dtype: str = "float32"
    saved_max_abs_logit_diff: float = 0.0
    saved_top1_agreement: float = 1.0
    saved_mean_kl: float = 0.0  # nats per token, the adapter model's next-token distribution vs the saved weights'

    def metrics(self) -> dict[str, float]:
        return {f"merge_{k}": v for k, v in asdict(self).items() if isinstance(v, (int, float))}


def logits_of(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch.to(model.device)).logits.float().cpu()


def logit_agreement(reference: torch.Tensor, other: torch.Tensor, mask: torch.Tensor) -> tuple[float, float, float]:
    """max |Δlogit|, mean |Δlogit| and top-1 agreement over the unmasked positions."""
    diff = (reference - other).abs()[mask]
    top1 = (reference.argmax(-1) == other.argmax(-1))[mask].float().mean().item()
    return diff.max().item(), diff.mean().item(), top1


def per_token_kl(reference: torch.Tensor, other: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(reference || other) between next-token distributions at each unmasked position, in nats."""
    p, q = torch.log_softmax(reference, -1), torch.log_softmax(other, -1)
    return (p.exp() * (p - q)).sum(-1)[mask]


def mean_kl(reference: torch.Tensor, other: torch.Tensor, mask: torch.Tensor) -> float:
    return per_token_kl(reference, other, mask).mean().item()


def fidelity_report(reference: torch.Tensor, merged: torch.Tensor, mask: torch.Tensor, cfg: MergeConfig,
                    comparison: str, saved: torch.Tensor | None = None) -> FidelityReport:
    """Compare logits; raise MergeFidelityError above `cfg.max_logit_diff`, or above `cfg.saved_max_kl` (and
    `cfg.saved_max_logit_diff` if set) for `saved` (the logits of the weights as saved; None: saved in fp32, the
    same as `merged`)."""
    max_diff, mean_diff, top1 = logit_agreement(reference, merged, mask)
    shipped = merged if saved is None else saved
    saved_max, _, saved_top1 = (max_diff, mean_diff, top1) if saved is None else logit_agreement(reference, saved, mask)
    saved_kl = mean_kl(reference, shipped, mask)
    report = FidelityReport(
        prompts=int(mask.shape[0]), tokens=int(mask.sum()), max_abs_logit_diff=max_diff, mean_abs_logit_diff=mean_diff,
        top1_agreement=top1, base_weights=cfg.base_weights, comparison=comparison,
        saved_dtype=resolve_dtype(cfg.dtype), saved_max_abs_logit_diff=saved_max, saved_top1_agreement=saved_top1,
        saved_mean_kl=saved_kl,
    )
    where = f"on {report.prompts} prompts ({comparison}); nothing was exported"
    if report.max_abs_logit_diff > cfg.max_logit_diff:
        raise MergeFidelityError(
            f"merged model differs from the adapter model by max |Δlogit| = {report.max_abs_logit_diff:.3g} "
            f"> merge.max_logit_diff = {cfg.max_logit_diff:g} {where}")
    measured = f"(max |Δlogit| {saved_max:.3g}, top-1 agreement {saved_top1:.3f}, mean KL {saved_kl:.3g} nats)"
    if saved_kl > cfg.saved_max_kl:
        raise MergeFidelityError(
            f"merged weights as saved in {report.saved_dtype} differ from the adapter model by a mean per-token KL "
            f"divergence of {saved_kl:.3g} nats > merge.saved_max_kl = {cfg.saved_max_kl:g} {measured} {where}; "
            "correct merges saved in bf16 measured 3.2e-4 at most. Either the merge is wrong (applied twice, a layer "
            "left out) or the saved dtype cannot hold the update (an unquantized bf16 base with a small learning "
            "rate: its changes round away): save in float32 (merge.dtype: float32)")
    if cfg.saved_max_logit_diff is not None and saved_max > cfg.saved_max_logit_diff:
        raise MergeFidelityError(
            f"merged weights as saved in {report.saved_dtype} differ from the adapter model by max |Δlogit| = "
            f"{saved_max:.3g} > merge.saved_max_logit_diff = {cfg.saved_max_logit_diff:g} {measured} {where}; "
            "save in float32 (merge.dtype) or raise the threshold")
    return report
