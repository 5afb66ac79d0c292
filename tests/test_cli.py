"""The `peftlab` command, run as a real process: data check, train, generate, compare, export."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from peftlab.cli import main

CHATS = [("Hi", "Aye! Hello, matey."), ("Sky?", "Aye! Blue, matey."), ("2+2?", "Aye! Four, matey.")]


def peftlab_command() -> list[str]:
    """The installed console script when it is on PATH, else ``python -m peftlab.cli``."""
    script = shutil.which("peftlab")
    return [script] if script else [sys.executable, "-m", "peftlab.cli"]


def run(args: list[str], cwd: Path, module: bool = False) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "peftlab.cli"] if module else peftlab_command()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA run trained through `peftlab train` (the Hydra app), its folder found from result.json."""
    root = tmp_path_factory.mktemp("cli")
    data = root / "train.jsonl"
    lines = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in CHATS
    ]
    data.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    folder = root / "run"
    overrides = [
        f"data.train_file={data}",
        "data.valid_file=null",
        "data.max_length=64",
        "train.max_steps=60",
        "train.batch_size=4",
        "train.lr=3e-2",
        "logger=none",
        f"hydra.run.dir={folder}",
    ]
    result = run(["train", *overrides], cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (folder / "adapter" / "adapter_config.json").is_file()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["final_train_loss"] < 0.5 * summary["first_train_loss"]
    return folder


def test_data_check_command_reports_errors_and_exit_status(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    good_line = json.dumps(
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    )
    bad.write_text(
        good_line + "\nnot json\n" + json.dumps({"messages": [{"role": "user", "content": "q"}]}) + "\n"
    )
    result = run(["data", "check", str(bad)], cwd=tmp_path, module=True)
    assert result.returncode == 1
    assert f"{bad}:2: not JSON" in result.stdout
    assert f"{bad}:3: no assistant turn" in result.stdout
    bad.write_text(good_line + "\n")
    assert main(["data", "check", str(bad)]) == 0
    assert "1 usable examples (chat), 0 error(s)" in capsys.readouterr().out


def test_generate_command_answers_with_and_without_the_adapter(run_dir: Path, tmp_path: Path, capsys) -> None:
    tuned = run(["generate", str(run_dir), "--prompt", "Sky?", "--max-new-tokens", "20"], cwd=tmp_path)
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    assert tuned.stdout.strip() == "Aye! Blue, matey."
    messages = tmp_path / "messages.json"
    messages.write_text(json.dumps([{"role": "user", "content": "Sky?"}]))
    assert (
        main(["generate", str(run_dir), "--messages", str(messages), "--no-adapter", "--max-new-tokens", "8"])
        == 0
    )
    assert not capsys.readouterr().out.startswith("Aye!")


def test_compare_and_export_commands(run_dir: Path, tmp_path: Path, capsys) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Sky?\nHi\n")
    out = tmp_path / "compare.md"
    assert (
        main(
            ["compare", str(run_dir), "--prompts", str(prompts), "--out", str(out), "--max-new-tokens", "20"]
        )
        == 0
    )
    text = out.read_text()
    assert "| 1 | Sky? |" in text and "Aye! Blue, matey. |" in text
    assert (
        main(["compare", str(run_dir), "--prompts", str(prompts), "--out", str(out)]) == 1
    )  # no silent overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", str(run_dir), str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert main(["export", str(run_dir), str(tmp_path / "merged")]) == 1


def test_bad_input_gives_a_message_not_a_traceback(tmp_path: Path, capsys) -> None:
    assert main(["generate", str(tmp_path / "nowhere"), "--prompt", "hi"]) == 1
    err = capsys.readouterr().err
    assert "run_config.json: missing" in err and "Traceback" not in err
    assert main(["frobnicate"]) == 2
