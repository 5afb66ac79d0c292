"""The paper-reproduction experiments (``configs/experiment/paper_*.yaml``) compose into the papers' settings."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from peftlab.builder import method_config
from peftlab.hydra_app import CONFIG_PATH, ExperimentConfig

EXPERIMENTS = Path(CONFIG_PATH) / "experiment"
EXPORT_SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "accuracy" / "export_paper_data.py"
# GLUE sentence-pair task -> (first text field, second text field, classes, and the LoRA paper's Table 9
# learning rate and epochs for RoBERTa-base)
GLUE_PAIR_TASKS = {
    "mnli": ("premise", "hypothesis", 3, 5e-4, 30),
    "qnli": ("question", "sentence", 2, 4e-4, 25),
    "qqp": ("question1", "question2", 2, 5e-4, 25),
    "rte": ("sentence1", "sentence2", 2, 5e-4, 80),
    "mrpc": ("sentence1", "sentence2", 2, 4e-4, 30),
}
# GLUE training examples per task (the sizes of the hub's train splits)
GLUE_TRAIN_SIZES = {"sst2": 67_349, "mnli": 392_702, "qnli": 104_743, "qqp": 363_846, "rte": 2_490, "mrpc": 3_668}
# experiment -> (arXiv id, the settings the paper states, as dotted paths into the composed config)
PAPERS = {
    "paper_lora_roberta_sst2": (
        "2106.09685",
        {
            "model.name_or_path": "roberta-base",
            "model.task": "sequence_classification",
            "method.name": "lora",
            "method.r": 8,
            "method.alpha": 8.0,
            "method.target_modules": ["query", "value"],
            "data.hf_dataset": "glue",
            "data.hf_config": "sst2",
            "data.max_length": 512,
            "train.lr": 5e-4,
            "train.batch_size": 16,
            "train.epochs": 60,
            "train.schedule": "linear",
        },
    ),
    **{
        f"paper_lora_roberta_{task}": (
            "2106.09685",
            {
                "model.name_or_path": "roberta-base",
                "model.task": "sequence_classification",
                "model.num_labels": num_labels,
                "method.name": "lora",
                "method.r": 8,
                "method.alpha": 8.0,
                "method.target_modules": ["query", "value"],
                "data.hf_config": task,
                "data.text_field": first,
                "data.text_pair_field": second,
                "data.max_length": 512,
                "train.lr": lr,
                "train.batch_size": 16,
                "train.epochs": epochs,
                "train.schedule": "linear",
            },
        )
        for task, (first, second, num_labels, lr, epochs) in GLUE_PAIR_TASKS.items()
    },
    "paper_prompt_tuning_boolq": (
        "2104.08691",
        {
            "model.task": "causal_lm",
            "method.name": "prompt_tuning",
            "method.num_virtual_tokens": 100,
            "method.prompt_tuning_init": "sample_vocab",
            "data.format": "completion",
            "train.lr": 0.3,
            "train.batch_size": 32,
            "train.max_steps": 30000,
        },
    ),
    "paper_prefix_tuning_e2e": (
        "2101.00190",
        {
            "model.name_or_path": "gpt2-medium",
            "model.task": "causal_lm",
            "method.name": "prefix_tuning",
            "method.num_virtual_tokens": 5,
            "method.prefix_projection": True,
            "data.format": "completion",
            "train.lr": 8e-5,
            "train.batch_size": 10,
            "train.epochs": 5,
            "train.schedule": "linear",
        },
    ),
}


def compose_experiment(name: str, *overrides: str) -> ExperimentConfig:
    """Compose ``configs/`` with ``experiment=name`` as the app does, into typed settings."""
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_PATH):
        cfg = compose(config_name="config", overrides=["output_dir=unused", f"experiment={name}", *overrides])
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def dotted(settings: object, path: str) -> object:
    """The value at ``a.b.c`` in nested dataclasses."""
    for part in path.split("."):
        settings = getattr(settings, part)
    return settings


def load_export_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("export_paper_data", EXPORT_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_paper_experiment_is_covered() -> None:
    assert sorted(path.stem for path in EXPERIMENTS.glob("paper_*.yaml")) == sorted(PAPERS)


@pytest.mark.parametrize("name", sorted(PAPERS))
def test_paper_experiment_composes_into_the_papers_settings(name: str) -> None:
    _, expected = PAPERS[name]
    settings = compose_experiment(name)
    found = {path: dotted(settings, path) for path in expected}
    assert found == expected


@pytest.mark.parametrize("name", sorted(PAPERS))
def test_paper_experiment_builds_a_valid_method_config(name: str) -> None:
    _, expected = PAPERS[name]
    settings = compose_experiment(name)
    config = method_config(settings.method, settings.model.task)
    carried = {
        path: value
        for path, value in expected.items()
        if path.startswith("method.") and hasattr(config, path.removeprefix("method."))
    }
    assert len(carried) >= 2, "the method config must hold the paper's method settings"
    for path, value in carried.items():
        assert getattr(config, path.removeprefix("method.")) == value, path


@pytest.mark.parametrize("name", sorted(PAPERS))
def test_paper_experiment_cites_the_paper_and_its_figure(name: str) -> None:
    arxiv, _ = PAPERS[name]
    comments = "\n".join(
        line
        for line in (EXPERIMENTS / f"{name}.yaml").read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    )
    assert f"arXiv {arxiv}" in comments
    assert re.search(r"Paper, (Table|Figure) \d+", comments), (
        "the paper's figure must sit next to the settings"
    )
    assert f"experiment={name}" in comments, "the comment must show the command that runs it"


@pytest.mark.parametrize("task", sorted(GLUE_TRAIN_SIZES))
def test_lora_warmup_is_six_percent_of_the_schedule_and_evaluation_is_per_epoch(task: str) -> None:
    settings = compose_experiment(f"paper_lora_roberta_{task}")
    steps_per_epoch = -(-GLUE_TRAIN_SIZES[task] // settings.train.batch_size)
    assert settings.train.warmup_steps == round(0.06 * steps_per_epoch * settings.train.epochs)
    assert settings.train.eval_every == settings.train.checkpoint_every == steps_per_epoch


def test_every_glue_experiment_has_its_own_tags_and_data() -> None:
    for task in GLUE_TRAIN_SIZES:
        settings = compose_experiment(f"paper_lora_roberta_{task}")
        assert settings.tags[-1] == task
        assert settings.data.hf_dataset == "glue"
        assert settings.data.format == "classification"


@pytest.mark.parametrize("name", sorted(PAPERS))
def test_paper_experiment_accepts_a_method_swap_for_the_full_fine_tuning_row(name: str) -> None:
    settings = compose_experiment(name, "method=full", "train.lr=5e-5")
    assert settings.method.name == "full"
    assert settings.train.lr == 5e-5
    assert dotted(settings, "model.task") == PAPERS[name][1]["model.task"]


def test_exported_paper_records_have_the_prompt_layout_the_configs_describe() -> None:
    export = load_export_script()
    boolq = export.boolq_record(
        {"question": "is the sky blue", "passage": " The sky is blue. ", "answer": True}
    )
    assert boolq == {"prompt": "The sky is blue.\nQuestion: is the sky blue?\nAnswer:", "completion": " yes"}
    assert export.boolq_record({"question": "q?", "passage": "p", "answer": False})["completion"] == " no"
    e2e = export.e2e_record(
        {"meaning_representation": "name[Aromi], food[Thai]", "human_reference": "Aromi is Thai."}
    )
    assert e2e == {"prompt": "name[Aromi], food[Thai] ||", "completion": " Aromi is Thai."}


def test_paper_data_export_never_replaces_existing_files(tmp_path: Path) -> None:
    export = load_export_script()
    target = tmp_path / "train.jsonl"
    target.write_text("mine\n", encoding="utf-8")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export.write_jsonl(target, [{"prompt": "p", "completion": " c"}], overwrite=False)
    assert target.read_text(encoding="utf-8") == "mine\n"


@pytest.mark.parametrize("task", ["rte", "mrpc"])
def test_the_paper_start_from_an_mnli_run_is_the_documented_command(task: str) -> None:
    name = f"paper_lora_roberta_{task}"
    comments = (EXPERIMENTS / f"{name}.yaml").read_text(encoding="utf-8")
    command = re.search(rf"peftlab train experiment={name} (train\.init_from=\S+ train\.init_head=new)", comments)
    assert command is not None, "the comment must show how to start from an MNLI run"
    settings = compose_experiment(name, *command.group(1).split())
    assert settings.train.init_head == "new" and settings.train.init_from == "MNLI_RUN_DIR"
    assert dotted(settings, "model.num_labels") == 2
    mnli = compose_experiment("paper_lora_roberta_mnli")
    assert dotted(mnli, "model.num_labels") == 3 and mnli.method == settings.method
