"""W&B logging: offline run files hold what was logged (read back from the ``.wandb`` file), a sweep is
one group, and without W&B (not installed, or failing to start) runs finish with their local files."""

from __future__ import annotations

import json
import struct
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from peftlab.hydra_app import bench_main, train_main
from peftlab.wandb_logger import (
    WandbRunSpec,
    event_metrics,
    has_wandb_credentials,
    open_wandb_sink,
    resolve_wandb_mode,
)

# The `.wandb` file is a LevelDB-style log: a 7-byte file header, then 32 KiB blocks of records, each
# with a 7-byte header (CRC-32 of type byte + payload, length, type) holding a serialized protobuf Record.
WANDB_FILE_HEADER = struct.Struct("<4sHB")
WANDB_RECORD_HEADER = struct.Struct("<IHB")
WANDB_BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> Iterator[object]:
    """The protobuf records of an offline ``run-*.wandb`` file, checksums verified."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, _ = WANDB_FILE_HEADER.unpack_from(data)
    assert (ident, magic) == (b":W&B", 0xBEE1)
    position, pending = WANDB_FILE_HEADER.size, b""
    while position + WANDB_RECORD_HEADER.size <= len(data):
        if WANDB_BLOCK - position % WANDB_BLOCK < WANDB_RECORD_HEADER.size:
            position += WANDB_BLOCK - position % WANDB_BLOCK  # block padding
            continue
        checksum, length, kind = WANDB_RECORD_HEADER.unpack_from(data, position)
        chunk = data[position + WANDB_RECORD_HEADER.size : position + WANDB_RECORD_HEADER.size + length]
        position += WANDB_RECORD_HEADER.size + length
        if kind == 0:
            continue
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == checksum
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def finished_records(wandb_file: Path, timeout_s: float = 30.0) -> list:
    """The file's records once W&B's service has written them all (its last record is ``exit``).

    ``run.finish()`` returns when the service has the run's data; the service writes the file moments later.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        records = list(wandb_records(wandb_file))
        if records and records[-1].WhichOneof("record_type") == "exit":
            return records
        if time.monotonic() > deadline:
            raise AssertionError(f"{wandb_file}: no exit record after {timeout_s} s ({len(records)} records)")
        time.sleep(0.2)


def read_offline_run(run_dir: Path) -> dict:
    """History rows, summary, config and run names of one offline run folder."""
    (wandb_file,) = run_dir.glob("run-*.wandb")
    history, summary, config, run = [], {}, {}, None
    for record in finished_records(wandb_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
        elif kind == "summary":
            summary.update(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.summary.update
                }
            )
        elif kind == "run":
            run = record.run
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    assert run is not None
    return {
        "history": history,
        "summary": summary,
        "config": config,
        "group": run.run_group,
        "name": run.display_name,
        "job_type": run.job_type,
    }


def offline_run_dirs(output_dir: Path) -> list[Path]:
    return sorted((output_dir / "wandb").glob("offline-run-*"))


def test_offline_sink_writes_config_events_and_summary(tmp_path: Path) -> None:
    rng = np.random.default_rng()
    events = [
        {"step": step, "train_loss": float(rng.uniform(1, 5)), "lr": float(rng.uniform(0, 1e-3)), "note": "x"}
        for step in range(1, 6)
    ]
    spec = WandbRunSpec(project="peftlab-tests", name="method=lora,seed=3", group="sweep-a", job_type="lora")
    sink, reason = open_wandb_sink(spec, "offline", {"method": {"name": "lora", "r": 8}}, tmp_path)
    assert reason is None and sink is not None
    for event in events:
        sink.log(event)
    sink.log_summary({"status": "ok", "peak_mem_gib": 1.25, "nested": {"value": 3}})
    sink.close()
    sink.close()  # twice is harmless
    (run_dir,) = offline_run_dirs(tmp_path)
    run = read_offline_run(run_dir)
    assert [row["step"] for row in run["history"]] == [1, 2, 3, 4, 5]
    assert [row["train_loss"] for row in run["history"]] == [e["train_loss"] for e in events]
    assert [row["lr"] for row in run["history"]] == [e["lr"] for e in events]
    assert all("note" not in row for row in run["history"])  # numbers only
    assert run["summary"]["status"] == "ok" and run["summary"]["peak_mem_gib"] == 1.25
    assert run["summary"]["nested/value"] == 3
    assert run["config"]["method"] == {"name": "lora", "r": 8}
    assert (run["group"], run["name"], run["job_type"]) == ("sweep-a", "method=lora,seed=3", "lora")


def test_event_metrics_keep_numbers_and_prefix_event_kinds() -> None:
    assert event_metrics({"step": 4, "train_loss": 1.5, "done": True, "name": "x"}) == {
        "train_loss": 1.5,
        "step": 4,
    }
    assert event_metrics({"event": "eval_step", "step": 2, "loss": 0.5, "extra": {"a": 1}}) == {
        "eval/loss": 0.5,
        "eval/extra/a": 1,
        "step": 2,
    }
    assert event_metrics({"step": 1, "loss": float("nan")}) == {}


def test_wandb_mode_auto_is_online_only_with_credentials(tmp_path: Path) -> None:
    empty_netrc = tmp_path / "netrc"
    empty_netrc.write_text("")
    plain = {"NETRC": str(empty_netrc)}
    assert resolve_wandb_mode("auto", plain) == "offline"
    assert resolve_wandb_mode("auto", {**plain, "WANDB_API_KEY": "k" * 40}) == "online"
    assert resolve_wandb_mode("auto", {**plain, "WANDB_MODE": "disabled"}) == "disabled"
    assert resolve_wandb_mode("offline", {**plain, "WANDB_API_KEY": "k" * 40}) == "offline"
    logged_in = tmp_path / "netrc_logged_in"
    logged_in.write_text("machine api.wandb.ai\n  login user\n  password " + "p" * 40 + "\n")
    assert has_wandb_credentials({"NETRC": str(logged_in)})
    assert not has_wandb_credentials({"NETRC": str(logged_in), "WANDB_BASE_URL": "https://wandb.example.org"})
    with pytest.raises(ValueError, match=r"logger\.wandb_mode is 'sometimes'"):
        resolve_wandb_mode("sometimes", plain)


def test_sweep_with_wandb_offline_is_one_group_with_runs_named_by_overrides(
    tmp_path: Path, monkeypatch
) -> None:
    sweep = tmp_path / "sweep"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "peftlab",
            "-m",
            "method=lora,prompt_tuning",
            "logger=wandb",
            "logger.wandb_mode=offline",
            "logger.console=false",
            "bench.warmup_steps=1",
            "bench.steps=2",
            f"hydra.sweep.dir={sweep}",
        ],
    )
    bench_main()
    groups, names = set(), []
    for job in sorted(path for path in sweep.iterdir() if path.is_dir()):
        result = json.loads((job / "result.json").read_text())
        assert result["status"] == "ok" and result["notes"] == []
        (run_dir,) = offline_run_dirs(job)
        run = read_offline_run(run_dir)
        events = [json.loads(line) for line in (job / "events.jsonl").read_text().splitlines()]
        assert [row["train_loss"] for row in run["history"]] == [e["train_loss"] for e in events]
        assert run["summary"]["peak_mem_gib"] == result["metrics"]["peak_mem_gib"]
        assert run["summary"]["tokens_per_s"] == result["metrics"]["tokens_per_s"]
        assert run["config"]["method"]["name"] == result["method"]
        assert run["config"]["system"]["torch"] == result["system"]["torch"]
        assert run["job_type"] == result["method"]
        assert run["name"] == ",".join(result["overrides"])
        groups.add(run["group"])
        names.append(run["name"])
    assert groups == {f"bench-{sweep.name}"}
    assert names[0].startswith("method=lora,logger=wandb,") and names[1].startswith(
        "method=prompt_tuning,logger=wandb,"
    )
    assert all("bench.steps=2" in name for name in names)


@pytest.mark.parametrize("failure", ["not_installed", "init_raises"])
def test_training_completes_with_local_files_when_wandb_is_unavailable(
    failure: str, tmp_path: Path, monkeypatch
) -> None:
    if failure == "not_installed":
        monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
        expected = "W&B is not available"
    else:
        import wandb

        def refuse(*args, **kwargs):
            raise RuntimeError("api.wandb.ai unreachable")

        monkeypatch.setattr(wandb, "init", refuse)
        expected = "W&B failed to start in offline mode (RuntimeError: api.wandb.ai unreachable)"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "peftlab",
            "logger=wandb",
            "logger.wandb_mode=offline",
            "logger.console=false",
            "train.max_steps=2",
            f"hydra.run.dir={tmp_path}",
        ],
    )
    train_main()
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "ok" and result["metrics"]["steps"] == 2
    assert any(expected in note for note in result["notes"])
    assert len((tmp_path / "events.jsonl").read_text().splitlines()) == 2
    assert not (tmp_path / "wandb").exists()
