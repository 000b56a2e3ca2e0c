"""GGUF files of the merged model, for llama.cpp, Ollama and LM Studio: made by llama.cpp's own converter and quantizer
(llm_engineering/export/llama_cpp.py) and checked in llama.cpp itself before anything is exported.

`export.gguf: [f16, q8_0, q4_k_m, q5_k_m, q6_k]`: the converter writes `model-f16.gguf` from the export's safetensors
(any architecture it knows: Llama, Qwen2/3, Gemma 2/3, Mistral, Phi-3, ...), the quantizer makes each other type from
that file. llama.cpp then loads each file and it must, on the eval prompts:
- encode them to the ids the model's own tokenizer gives,
- choose the merged model's next token, or one it scores within TIE of it (teacher-forced top-1 agreement), at least
  as often as its type's floor
  (MIN_TOP1), and keep its next-token distribution within its type's mean per-token KL divergence (MAX_KL),
- end its greedy chat answer at the end-of-turn token wherever the merged model's answer ends there.
Else the export fails naming the file and the figure, with nothing exported and the previous export intact.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from llm_engineering.config import ModelConfig
from llm_engineering.export.llama_cpp import LlamaCppError, conversion_problem, convert, missing_tools, quantize
from llm_engineering.model.generation import end_ids

logger = logging.getLogger(__name__)

# Per type: the lowest teacher-forced top-1 agreement with the merged model (fp32) and the highest mean per-token KL
# divergence allowed. Measured (bench/gguf_fidelity.py, bench/results/gguf_fidelity.json) on the default run's
# export, 16 unseen booking prompts: f16 1.000 / 2.5e-6, q8_0 0.981 / 4.0e-3, q6_k 0.966 / 1.8e-2, q5_k_m 0.894 /
# 0.12, q4_k_m 0.922 / 0.080; on the tests' tiny random models (near-tied logits flip most easily) q4_k_m down to
# 0.798 (Gemma 3 after two SFT steps) and q5_k_m 0.827. Each bar leaves room below (above) those; a broken file
# scores far lower. f16's KL bar is tight on purpose: one matrix with its rows reversed moves a tiny model's KL to
# 4e-4 while its top-1 barely moves (tests/test_gguf.py).
MIN_TOP1 = {"f16": 0.99, "q8_0": 0.95, "q6_k": 0.9, "q5_k_m": 0.75, "q4_k_m": 0.75}
MAX_KL = {"f16": 1e-4, "q8_0": 1e-2, "q6_k": 5e-2, "q5_k_m": 0.25, "q4_k_m": 0.25}  # nats per token
# llama.cpp's choice agrees when the merged model scores it within this of its best token: a tie is not a flip (a tiny
# random Gemma 2, soft-capped to near-equal logits, has KL 0.0 from its f16 file and still 1 % of tied positions)
TIE = 1e-3
ANSWER_TOKENS = 48  # the greedy chat answer compared for where it stops


class GGUFError(RuntimeError):
    """The model cannot be made into GGUF, or a file does not reproduce the merged model in llama.cpp."""


@dataclass(frozen=True)
class GGUFReport:
    gguf_type: str
    file: str
    bytes: int
    seconds: float  # converting (f16) or quantizing (the others)
    top1_agreement: float
    mean_kl: float  # of llama.cpp's next-token distribution from the merged model's, per token (nats)
    max_abs_logit_diff: float  # reported, not gated: it grows with the vocabulary and the logit scale
    tokenizer_ids_equal: bool
    answer_stops: bool  # llama.cpp's greedy answer ended at an end-of-turn token
    merged_answer_stops: bool  # ... as the merged model's did (the gate: not one without the other)
    answer_equal: bool  # the same answer text


def check_model_supports_gguf(model_cfg: ModelConfig, gguf_types) -> None:
    """When the pipeline compiles: the tools are installed and llama.cpp's converter knows this model's architecture
    and tokenizer, before any step runs. A hub model not in the local cache is checked in the export step instead."""
    if not gguf_types:
        return
    if problem := missing_tools():
        raise GGUFError(problem)
    from llm_engineering.model.loading import checkpoint_location

    try:
        location = Path(checkpoint_location(model_cfg))
    except OSError as exc:
        logger.warning("export.gguf is checked in the export step: the model is not readable yet (%s)", exc)
        return
    if not (location / "config.json").is_file():
        logger.warning("export.gguf is checked in the export step: %s is not a local checkpoint", location)
        return
    if problem := conversion_problem(location):
        raise GGUFError(f"export.gguf: {problem}")


def write_gguf_files(model, tokenizer, checkpoint: Path, gguf_types, rows: list[dict], texts: list[str], *,
                     enforce: bool = True) -> list[GGUFReport]:
    """`model-<type>.gguf` for each type into `checkpoint` (the export, already holding the merged model's safetensors
    and tokenizer), each measured against `model` in llama.cpp; raises GGUFError on the first that fails its gate
    (`enforce`; bench/gguf_fidelity.py measures without it)."""
    reference = _Reference(model, tokenizer, texts, rows)
    reports = []
    with tempfile.TemporaryDirectory(prefix="gguf-", dir=checkpoint.parent) as scratch:
        f16 = checkpoint / "model-f16.gguf" if "f16" in gguf_types else Path(scratch) / "model-f16.gguf"
        made = {"f16": _timed(convert, checkpoint, f16)}
        for gguf_type in gguf_types:
            if gguf_type not in made:
                made[gguf_type] = _timed(quantize, f16, checkpoint / f"model-{gguf_type}.gguf", gguf_type)
            report = reference.measure(*made[gguf_type], gguf_type)
            if enforce and (problems := gate(report)):
                raise GGUFError(f"{report.file} does not reproduce the merged model in llama.cpp on "
                                f"{len(texts)} eval prompts: {'; '.join(problems)}; nothing was exported")
            reports.append(report)
    return reports


def check_gguf_file(model, tokenizer, path: Path, gguf_type: str, rows: list[dict], texts: list[str]) -> GGUFReport:
    """An existing GGUF file in llama.cpp against `model` (the same measure as an export's files): e.g. a model read
    from that very file (`model.source: gguf`), which should compute what llama.cpp computes on it."""
    return _Reference(model, tokenizer, texts, rows).measure(Path(path), 0.0, gguf_type)


def _timed(tool, *args) -> tuple[Path, float]:
    """Run one of llama.cpp's tools: the file it made and the seconds it took; its failure as the export's."""
    start = time.perf_counter()
    try:
        return tool(*args), time.perf_counter() - start
    except LlamaCppError as exc:
        raise GGUFError(f"{exc}; nothing was exported") from exc


def gate(report: GGUFReport) -> list[str]:
    """What is wrong with a file (empty: it passes)."""
    problems = []
    if report.top1_agreement < MIN_TOP1[report.gguf_type]:
        problems.append(f"top-1 agreement with the merged model {report.top1_agreement:.3f} < "
                        f"{MIN_TOP1[report.gguf_type]:g}")
    if report.mean_kl > MAX_KL[report.gguf_type]:
        problems.append(f"mean KL divergence {report.mean_kl:.3g} > {MAX_KL[report.gguf_type]:g}")
    if not report.tokenizer_ids_equal:
        problems.append("its tokenizer encodes the eval prompts to other ids")
    if report.merged_answer_stops and not report.answer_stops:
        problems.append(f"its greedy chat answer does not stop at the end-of-turn token within {ANSWER_TOKENS} "
                        "tokens, where the merged model's does")
    return problems


def _greedy_answer(model, tokenizer, prompt: list[int]) -> tuple[str, bool]:
    """The model's greedy answer to `prompt` (ids) and whether it ended at one of its end tokens."""
    ends = end_ids(model, tokenizer)
    output = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                            max_new_tokens=ANSWER_TOKENS, do_sample=False, eos_token_id=ends,
                            pad_token_id=min(ends))[0, len(prompt):].tolist()
    stops = any(t in ends for t in output)
    if stops:
        output = output[:next(i for i, t in enumerate(output) if t in ends)]
    return tokenizer.decode(output, skip_special_tokens=True), stops


class _Reference:
    """What the merged model computes on the check texts, once, for every file to be compared with."""

    @torch.no_grad()
    def __init__(self, model, tokenizer, texts: list[str], rows: list[dict]):
        from llm_engineering.data.formats import chat_messages

        self.texts = texts
        self.ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        # fp32, on a copy: a bf16 model cast up and back would keep its rotary buffer in bf16 afterwards
        upcast = copy.deepcopy(model).float() if model.dtype != torch.float32 else model
        upcast.eval()
        self.logits = [upcast(input_ids=torch.tensor([ids])).logits[0].float() for ids in self.ids]
        chats = [chat_messages(r["messages"][:-1]) for r in rows if r.get("messages")][:1]
        self.prompt = (tokenizer(tokenizer.apply_chat_template(chats[0], tokenize=False, add_generation_prompt=True),
                                 add_special_tokens=False)["input_ids"] if chats else None)
        self.answer = _greedy_answer(upcast, tokenizer, self.prompt) if chats else None
        del upcast

    def measure(self, path: Path, seconds: float, gguf_type: str) -> GGUFReport:
        """The file in llama.cpp against the merged model: teacher-forced logits, tokenizer ids, a greedy answer."""
        import numpy as np
        from llama_cpp import Llama

        longest = max([len(i) for i in self.ids] + [len(self.prompt or []) + ANSWER_TOKENS])
        llm = Llama(model_path=str(path), n_ctx=longest + 8, logits_all=True, verbose=False, n_threads=1)
        try:
            texts_ids = [llm.tokenize(text.encode(), add_bos=False, special=True) for text in self.texts]
            agree, kl, max_diff = [], [], 0.0
            for ids, expected in zip(self.ids, self.logits):
                llm.reset()
                llm.eval(ids)
                logits = torch.from_numpy(np.array(llm.scores[:len(ids)], dtype=np.float32))
                chosen = expected.gather(-1, logits.argmax(-1, keepdim=True)).squeeze(-1)
                agree.append(chosen >= expected.max(-1).values - TIE)
                kl.append(torch.nn.functional.kl_div(logits.log_softmax(-1), expected.log_softmax(-1),
                                                     log_target=True, reduction="none").sum(-1))
                max_diff = max(max_diff, (logits - expected).abs().max().item())
            answer, stops = "", False
            if self.prompt is not None:
                llm.reset()
                done = llm.create_completion(self.prompt, max_tokens=ANSWER_TOKENS, temperature=0.0, top_k=1)
                answer, stops = done["choices"][0]["text"], done["choices"][0]["finish_reason"] == "stop"
        finally:
            llm.close()
        merged_answer, merged_stops = self.answer or ("", False)
        return GGUFReport(gguf_type=gguf_type, file=path.name, bytes=path.stat().st_size, seconds=round(seconds, 2),
                          top1_agreement=torch.cat(agree).float().mean().item(),
                          mean_kl=max(torch.cat(kl).mean().item(), 0.0), max_abs_logit_diff=max_diff,
                          tokenizer_ids_equal=texts_ids == self.ids, answer_stops=stops,
                          merged_answer_stops=merged_stops, answer_equal=answer.strip() == merged_answer.strip())
