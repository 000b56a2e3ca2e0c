"""`model.source: gguf`: a GGUF file fine-tuned as a base model. Round trip: the project's own export writes a GGUF
(llama.cpp's converter), a pipeline fine-tunes again from that file, and the model read from it computes what
llama.cpp computes on the same file. Refusals when the pipeline compiles: a missing file, an architecture
transformers' GGUF reader cannot read."""

import hashlib
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import mlflow
from zenml.client import Client

from llm_engineering.config import ModelConfig, load_run_config
from llm_engineering.data.templates import row_text
from llm_engineering.export.export_dir import load_exported, write_export
from llm_engineering.export.gguf_file import check_gguf_file, gate
from llm_engineering.model.gguf_source import GGUFSourceError, gguf_lineage
from llm_engineering.model.loading import checkpoint_location, load_model, load_tokenizer
from pipelines.checks import check_run
from tests.pipeline_helpers import run_pipeline, tiny_parameters, write_config
from tests.test_default_pipeline import mlflow_run_of
from tests.test_gguf import ROWS


@pytest.fixture(scope="module")
def exported_gguf(tiny_model_dir, tmp_path_factory):
    """The tiny model as the export writes it, with its f16 GGUF (made and checked in llama.cpp)."""
    model, tokenizer = load_exported(tiny_model_dir)
    out = write_export(model, tokenizer, tmp_path_factory.mktemp("export") / "tiny", "card", gguf_types=["f16"],
                       check_rows=ROWS)
    return model, out / "model-f16.gguf"


def gguf_model_cfg(path) -> ModelConfig:
    return ModelConfig(source="gguf", name_or_path=str(path), dtype="float32", quantization={"method": "none"})


def test_a_model_read_from_a_gguf_computes_what_llama_cpp_computes_on_that_file(exported_gguf, tmp_path,
                                                                                 monkeypatch):
    monkeypatch.setenv("LLM_ENGINEERING_HOME", str(tmp_path / "cache"))
    original, path = exported_gguf
    cfg = gguf_model_cfg(path)
    model, tokenizer = load_model(cfg, quantize=False, dtype="float32"), load_tokenizer(cfg)
    texts = [row_text(tokenizer, row) for row in ROWS]
    report = check_gguf_file(model, tokenizer, path, "f16", ROWS, texts)
    assert gate(report) == [] and report.top1_agreement >= 0.99 and report.tokenizer_ids_equal, report
    # the weights it was written from, up to f16 rounding
    ids = torch.tensor([tokenizer(texts[0], add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, original(ids).logits, atol=1e-2)
    # converted once, under the file's digest, with what it was made from
    location = Path(checkpoint_location(cfg))
    assert checkpoint_location(cfg) == str(location) and location.parent == tmp_path / "cache" / "models"
    lineage = gguf_lineage(location)
    assert lineage["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and lineage["file"] == path.name
    assert lineage["architecture"] == "llama" and "F16" in lineage["tensor_types"]


def test_fine_tuning_again_from_the_exported_gguf_records_the_file_in_the_card_and_mlflow(exported_gguf,
                                                                                          shared_repo):
    root, uri = shared_repo
    shared_repo.activate()
    _, path = exported_gguf
    parameters = tiny_parameters(path)
    parameters["model"] = {"source": "gguf", "name_or_path": str(path), "dtype": "float32",
                           "quantization": {"method": "4bit", "compute_dtype": "float32"}}
    parameters["train"].update(max_steps=2, eval_steps=2, checkpoint_steps=None)
    parameters["export"] = {"output_dir": "outputs/from-gguf", "registered_model_name": None}
    done = run_pipeline(root, write_config(root / "from-gguf.yaml", parameters))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    card = (root / "outputs" / "from-gguf" / "README.md").read_text()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert f"Read from the GGUF file `{path.name}` (SHA-256 `{digest}`" in card and "dequantized" in card
    tracked = mlflow_run_of(uri, Client().get_pipeline("finetune").last_run.name)
    recorded = mlflow.MlflowClient(tracking_uri=uri).download_artifacts(tracked.info.run_id, "base_gguf_source.json",
                                                                        str(root))
    assert json.loads(Path(recorded).read_text())["sha256"] == digest


def write_gguf(path: Path, architecture: str) -> Path:
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def run_config(path):
    return load_run_config({"model": {"source": "gguf", "name_or_path": str(path)}})


def test_an_architecture_transformers_cannot_read_is_refused_when_the_pipeline_compiles_naming_both(tmp_path):
    bert = write_gguf(tmp_path / "encoder.gguf", "bert")
    with pytest.raises(GGUFSourceError, match=r"encoder.gguf is a 'bert' model, which transformers' GGUF reader "
                                              r"cannot load; it reads .*gemma3.*llama.*qwen3"):
        check_run(run_config(bert), "finetune")
    with pytest.raises(GGUFSourceError, match=r"GGUF file not found: .*missing.gguf"):
        check_run(run_config(tmp_path / "missing.gguf"), "finetune")
    with pytest.raises(GGUFSourceError, match=r"'no_such_package' is neither a .gguf file nor an installed package"):
        check_run(run_config("no_such_package"), "finetune")
