"""A base weight as training saw it: the one helper the in-memory merge (merge_adapter.py) and the streamed merge
(streamed.py) share, kept below both so neither imports the other."""

import torch

from llm_engineering.config import ModelConfig
from llm_engineering.model.precision import torch_dtype


def trained_view(weight: torch.Tensor, model_cfg: ModelConfig) -> torch.Tensor:
    """A linear weight as training saw it, in fp32: quantized then dequantized exactly as transformers + bitsandbytes
    do on load (cast to the load dtype, quantize), or just rounded to the load dtype when not quantized."""
    import bitsandbytes as bnb

    q = model_cfg.quantization
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where transformers would have quantized it
    if q.method == "4bit":
        storage = torch.uint8 if q.quant_storage == "uint8" else torch_dtype(q.quant_storage)
        compute = torch_dtype(q.compute_dtype)
        param = bnb.nn.Params4bit(weight.to(compute), requires_grad=False, quant_type=q.quant_type,
                                  compress_statistics=q.double_quant, quant_storage=storage).to(device)
        return bnb.functional.dequantize_4bit(param.data, param.quant_state).float().to(weight.device)
    if q.method == "8bit":
        cb, scb, _ = bnb.functional.int8_vectorwise_quant(
            weight.to(torch_dtype(model_cfg.dtype)).contiguous().to(device=device, dtype=torch.float16))
        return bnb.functional.int8_vectorwise_dequant(cb, scb).float().to(weight.device)
    return weight.to(torch_dtype(model_cfg.dtype)).float()
