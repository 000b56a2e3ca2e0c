"""Shared fixtures: offline mode, a tiny random-init Llama with the real SmolLM2 tokenizer (seconds to train), and the
session's one ZenML repository + MLflow store that the pipeline tests share.

Every test that runs a pipeline or starts a server asks for a repository fixture (`shared_repo`, `fresh_repo`, or one
built on them): those are marked `pipeline` here, in one place; the few others that start processes or torch's
compiler are marked `slow` here too; `make test-fast` leaves both out.
"""

import atexit
import os
import shutil
import tempfile

# One throw-away ZenML store for the whole session, set before anything imports zenml (its config is a singleton).
os.environ["ZENML_CONFIG_PATH"] = tempfile.mkdtemp(prefix="zenml-config-")
# Its local artifact store holds every run's models (GBs): gone when the process ends, or disks fill run by run.
atexit.register(shutil.rmtree, os.environ["ZENML_CONFIG_PATH"], ignore_errors=True)
# And one datasets cache: a warm cache from an earlier run must not decide whether a test passes.
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="hf-datasets-")
atexit.register(shutil.rmtree, os.environ["HF_DATASETS_CACHE"], ignore_errors=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
# comet_ml (imported by transformers' Trainer, here before mlflow) would copy every MLflow run a test starts, model
# included, into an offline archive in the working directory; the Comet tests use our tracker flavor, not this
os.environ.setdefault("COMET_DISABLE_AUTO_LOGGING", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # one core per worker (`make test-fast` runs two): torch processes with
    os.environ["OMP_NUM_THREADS"] = "1"  # more threads than their share spin against each other (~10x slower)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from llm_engineering.config import AdapterConfig, DataConfig, ModelConfig, QuantizationConfig  # noqa: E402


def _zenml_source_root() -> None:
    """ZenML resolves steps, hooks and materializers against a source root: the repository found from the working
    directory, else the main module's directory. A pytest-xdist worker's main module has no file, so ZenML calls made
    outside a repository (loading an artifact, registering a flavor) would fail there: the project is the root."""
    from zenml.utils import source_utils

    source_utils.set_custom_source_root(str(Path(__file__).resolve().parents[1]))


_zenml_source_root()

TINY_LLAMA = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=512, tie_word_embeddings=True,
)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama (hidden 64) saved as safetensors next to the embedded model's real tokenizer."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    from llm_engineering.model.embedded import embedded_model_dir

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    config = LlamaConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **TINY_LLAMA,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def family_checkpoint(tmp_path_factory):
    """family name -> its tiny checkpoint (tests/model_families.py), built once per session when first asked for."""
    from tests.model_families import FAMILIES, build_family_checkpoint

    built = {}

    def checkpoint(name: str) -> Path:
        if name not in built:
            built[name] = build_family_checkpoint(FAMILIES[name], tmp_path_factory.mktemp(name))
        return built[name]
    return checkpoint


@pytest.fixture
def tiny_model_cfg(tiny_model_dir) -> ModelConfig:
    return ModelConfig(source="local", name_or_path=str(tiny_model_dir), dtype="float32",
                       quantization=QuantizationConfig(method="none"))


@pytest.fixture
def tiny_qlora_cfg(tiny_model_dir) -> ModelConfig:
    return ModelConfig(source="local", name_or_path=str(tiny_model_dir), dtype="float32",
                       quantization=QuantizationConfig(method="4bit", compute_dtype="float32"))


@pytest.fixture
def small_data_cfg() -> DataConfig:
    return DataConfig(num_rows=48, eval_rows=8)


@pytest.fixture
def lora_cfg() -> AdapterConfig:
    return AdapterConfig(r=4, alpha=8, dropout=0.0, target_modules="all-linear")


@pytest.fixture(scope="session")
def tokenizer():
    """The embedded SmolLM2 tokenizer with its own (ChatML) template, as the default run uses it."""
    from llm_engineering.model.loading import load_tokenizer

    return load_tokenizer(ModelConfig())


def prepared(data_cfg: DataConfig, max_length: int = 256, kind=None):
    """Rows as the dataset step hands them on (normalised, tokenized, masked, split; SFT rows, or `kind`'s)."""
    from llm_engineering.data.prepare import prepare
    from llm_engineering.model.loading import load_tokenizer

    return prepare(data_cfg, load_tokenizer(ModelConfig()), max_length, kind)


# A test that asks for one of these runs a pipeline or starts a server (directly or through a fixture built on them).
PIPELINE_FIXTURES = {"shared_repo", "fresh_repo", "default_run"}
# Tests that run no pipeline but start other processes or torch's compiler: tens of seconds each
# (bench/results/test_durations_*.txt), so out of `make test-fast` too. A node id, or a module for all its tests.
SLOW_WITHOUT_PIPELINE = (
    "tests/test_resume.py",  # trains in child processes and SIGKILLs them
    "tests/test_data_parallel.py::test_two_gloo_ranks",  # two torch.distributed rank processes
    "tests/test_data_parallel.py::test_a_failing_rank",
    "tests/test_stack_recipes.py::test_every_recipe_registers",  # a ZenML process with a store of its own
    "tests/test_regional_compile.py::test_compiled_layers",  # torch.compile on CPU
    "tests/test_masking_and_packing.py::test_flex_attention_packing",
    "tests/test_data.py::test_two_map_processes",  # starts datasets' worker processes
    # training until a measured quality is reached, or writing and checking GGUF files: 15-60 s each on one core
    "tests/test_preference_training.py::test_dpo_learns_to_prefer",
    "tests/test_preference_training.py::test_orpo_from_scratch",
    "tests/test_gguf.py::test_f16_q8_0_and_q4_k_m",  # llama.cpp's converter runs in a process of its own
    "tests/test_gguf.py::test_checking_a_gguf_leaves",
    "tests/test_gguf.py::test_a_gguf_with_a_wrong_tensor",
    "tests/test_gguf.py::test_an_architecture_llama_cpps",
    "tests/test_gguf_source.py::test_a_model_read_from_a_gguf",  # writes a GGUF with llama.cpp's converter
    "tests/test_model_families.py::test_llama_cpp_tokenizes_phi3s",
    "tests/test_model_families.py::test_each_familys_chat_model_in_mlflow",  # MLflow logs and loads each model
)


# The files that take longest first, longest to shortest (bench/results/test_durations_after.txt, summed per file):
# `make test`'s two workers take a file at a time in this order, so the short files fill in at the end and neither
# worker finishes on a long one alone.
LONGEST_FIRST = ("tests/test_default_pipeline.py", "tests/test_shipped_configs.py", "tests/test_object_store.py",
                 "tests/test_data_parallel.py", "tests/test_pipeline.py", "tests/test_system_cron.py",
                 "tests/test_resume.py", "tests/test_comet.py", "tests/test_regional_compile.py", "tests/test_gguf.py",
                 "tests/test_schedules.py", "tests/test_data_pipeline.py", "tests/test_masking_and_packing.py",
                 "tests/test_preference_training.py", "tests/test_step_operator.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: the rest keep their order
    for item in items:
        if PIPELINE_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.pipeline)
        elif item.nodeid.startswith(SLOW_WITHOUT_PIPELINE):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def shared_repo(tmp_path_factory) -> "SharedRepo":
    """One ZenML repository and MLflow store for the session, set up once by the README's set-up command, with the
    project's data/ beside it as in a clone (configs name their files from the root). Tests that share it read their
    own runs by name, never "the only run"."""
    from tests.pipeline_helpers import PROJECT, setup_repo

    root = tmp_path_factory.mktemp("shared-repo")
    shutil.copytree(PROJECT / "data", root / "data")
    return SharedRepo(root, setup_repo(root))


class SharedRepo:
    def __init__(self, root: Path, uri: str):
        self.root, self.uri = root, uri

    def __iter__(self):  # root, uri = shared_repo
        return iter((self.root, self.uri))

    def activate(self) -> None:
        """Point this process's ZenML client, and the stack's MLflow tracker, at this repository again: a module with a
        repository of its own in the session's store (the S3 one) re-points the tracker when it sets up."""
        from llm_engineering.orchestration.stack import ensure_local_stack

        cwd = os.getcwd()
        os.chdir(self.root)  # ZenML resolves our flavors' sources from the repository it finds here
        try:
            ensure_local_stack(self.root)
        finally:
            os.chdir(cwd)


@pytest.fixture
def fresh_repo(tmp_path) -> tuple[Path, str, dict]:
    """A repository with a ZenML store of its own (ZENML_CONFIG_PATH in the returned env, for the CLI calls), for a
    test whose stack or store nobody else may see: (root, MLflow URI, env)."""
    from tests.pipeline_helpers import setup_repo

    env = {"ZENML_CONFIG_PATH": str(tmp_path / "zenml-config")}
    root = tmp_path / "repo"
    return root, setup_repo(root, env), env


@pytest.fixture(scope="session")
def default_run(shared_repo) -> dict:
    """The real default run, once per session, through `zenml pipeline run` as a user starts it (`make run`):
    configs/default.yaml as shipped, on the embedded SmolLM2-135M (QLoRA NF4 on this CPU), in the shared repository.
    Every assertion that can read it reads it (tests/test_default_pipeline.py); configs/dpo.yaml starts from its
    champion. Returns what the user saw and where the run is."""
    from zenml.client import Client

    from tests.pipeline_helpers import PROJECT, run_pipeline

    shared_repo.activate()
    checkpoints = Path(Client().active_stack.artifact_store.path) / "sft-checkpoints"
    before = set(checkpoints.iterdir()) if checkpoints.is_dir() else set()
    done = run_pipeline(shared_repo.root, PROJECT / "configs" / "default.yaml", timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    run = Client().get_pipeline("finetune").last_run
    assert run.config.parameters["config"]["export"]["registered_model_name"] == "smollm2-booking"
    gate = dict(run.steps["export_model"].run_metadata)
    if gate["promotion"] != "champion":
        # The gate's decision is tested against its own rule (test_default_pipeline.py); what comes after it (serving,
        # DPO/GRPO from the champion, the UI page) must not hang on how one run's scores fell on this CPU, so the
        # version is made champion by hand, as the gate's reason tells a user to.
        import mlflow

        mlflow.MlflowClient(tracking_uri=shared_repo.uri).set_registered_model_alias("smollm2-booking", "champion",
                                                                                   str(gate["version"]))
    return {"root": shared_repo.root, "uri": shared_repo.uri, "console": done.stdout + done.stderr,
            "run_id": run.id, "checkpoints": checkpoints, "checkpoints_before": before, "gate": gate}
