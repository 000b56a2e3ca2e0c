"""TRL's SFTTrainer counting the tokens of padding-free batches right, and a variant of it with a loss that projects
only the trained positions through the LM head.

Most tokens of an SFT batch are prompt or padding (58 % on the default dataset) and get no loss, yet the vocabulary
projection (49k x 576 for SmolLM2, 128k x 4096 for Llama-3) is the largest matmul of the model. This loss runs the
model asking for one position of logits (so it computes almost none itself), takes the final hidden states, keeps
the rows whose next-token label is trained, and runs one LM-head matmul plus an fp32 cross-entropy on them.
TRL's own fused head does the same selection in vocabulary tiles, which is what a large-vocabulary model on a GPU
wants; on CPU its tiled bf16 log-softmax took half the step time here (bench/sft_speed.py), so
`train.lm_head_loss: auto` picks per device. The model is still called as a whole, so DDP, PEFT and the packing
mask hook all see the forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from trl import SFTTrainer

from llm_engineering.data.collate import non_padding_tokens
from llm_engineering.training.trl_internals import record_metric


class PackedTokensSFTTrainer(SFTTrainer):
    """Counts the non-padding tokens of varlen packing's padding-free batches (no attention mask) by their rows, not
    by the pad id (collate.non_padding_tokens): tokens/s in MLflow and the benchmark rely on it."""

    def _track_num_input_tokens(self, inputs):
        if self.args.include_num_input_tokens_seen != "non_padding" or "position_ids" not in inputs:
            return super()._track_num_input_tokens(inputs)
        count = torch.as_tensor(non_padding_tokens(inputs), device=self.args.device, dtype=torch.int64)
        self.state.num_input_tokens_seen += self.accelerator.gather(count).sum().item()


class TrainedPositionsSFTTrainer(PackedTokensSFTTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:  # only for callers that want logits; they get TRL's path
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"][:, 1:]
        backbone = self.accelerator.unwrap_model(model).get_base_model().get_decoder()
        captured = {}
        handle = backbone.register_forward_hook(lambda module, args, out: captured.update(hidden=out.last_hidden_state))
        try:
            model_inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
            # one position of logits, by an index tensor: a slice would hand the head a non-contiguous [B, 1, H]
            # view, which torch.matmul multiplies by a batch-expanded copy of the whole head (0.5 s/step measured)
            first = torch.zeros(1, dtype=torch.long, device=inputs["input_ids"].device)
            model(**model_inputs, logits_to_keep=first, use_cache=False)
        finally:
            handle.remove()
        trained = labels != -100
        hidden = captured["hidden"][:, :-1][trained]
        head = self.accelerator.unwrap_model(model).get_base_model().get_output_embeddings()
        logits = head(hidden).float()
        targets = labels[trained]
        loss = F.cross_entropy(logits, targets, reduction="sum")
        count = num_items_in_batch if num_items_in_batch is not None else trained.sum()
        loss = loss / torch.as_tensor(count, device=loss.device).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # like Trainer: DDP averages gradients across ranks
        with torch.no_grad():
            correct = (logits.argmax(dim=-1) == targets).sum()
            record_metric(self, "mean_token_accuracy", (correct / trained.sum().clamp(min=1)).item(), model.training)
        return loss
