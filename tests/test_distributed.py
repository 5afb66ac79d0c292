"""``peftlab.distributed`` in one process: data shares, launch checks, FSDP2, gathering, sharded checkpoints.

FSDP2 and DCP run here on a one-rank gloo process group, checked against an unsharded copy of the same
model (fresh random inputs, forward and gradients). The multi-process behaviour (2 ranks under torchrun)
is in ``test_distributed_torchrun.py``.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file

import peftlab
from peftlab import distributed
from peftlab.builder import method_config
from peftlab.checkpoint import (
    CheckpointError,
    Progress,
    latest_checkpoint,
    load_checkpoint,
    verify_checkpoint,
)
from peftlab.data import collate
from peftlab.data.encode import ClassificationExample, TokenExample
from peftlab.methods.lora import LoRALinear, lora_layers
from peftlab.models import build_model, preset_config
from peftlab.run_config import MethodSettings

VOCAB = 512
TASKS = {"tiny-llama": "causal_lm", "tiny-gpt2": "causal_lm", "tiny-bert": "sequence_classification"}
TOLERANCE = 1e-5


def peft_model(
    preset: str = "tiny-llama", method: str = "lora", dtype: str = "float32", **settings: object
) -> peftlab.PeftLabModel:
    """A preset model (seed 0) with ``method`` applied through the run-config path."""
    base = build_model(preset_config(preset), task=TASKS[preset], seed=0, dtype=dtype)
    task = TASKS[preset]
    return peftlab.apply(
        base, method_config(MethodSettings(name=method, num_virtual_tokens=4, **settings), task)
    )


def randomize_trainable(model: torch.nn.Module, seed: int) -> None:
    """Non-zero values in every trainable parameter (LoRA B starts at zero), so gradients reach everything."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


def random_batch(seed: int, batch: int = 3, length: int = 10) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=generator)


@pytest.fixture
def one_rank_group(tmp_path: Path):
    """A gloo process group of one rank in this process (FSDP2 and DCP need one), removed afterwards."""
    if dist.is_initialized():
        pytest.fail("a process group is already initialised in this test process")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


# --- data shares -----------------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=40), st.integers(min_value=1, max_value=9))
def test_rank_shares_partition_the_batch_in_order(count: int, world_size: int) -> None:
    items = list(range(count))
    shares = [distributed.shard_items(items, rank, world_size) for rank in range(world_size)]
    assert [item for share in shares for item in share] == items
    sizes = [len(share) for share in shares]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)


def test_shard_items_rejects_a_rank_outside_the_world() -> None:
    with pytest.raises(ValueError, match="rank 2 is outside a world of 2"):
        distributed.shard_items([1, 2, 3], 2, 2)


def token_example(ids: list[int]) -> TokenExample:
    return TokenExample(input_ids=ids, labels=list(ids))


def test_rank_collate_gives_each_rank_its_own_examples() -> None:
    examples = [
        token_example([1, 2, 3]),
        token_example([4, 5]),
        token_example([6, 7, 8, 9]),
        token_example([10, 11]),
    ]
    batches = [
        distributed.RankCollate(lambda items: collate(items, 0), rank, 2)(examples) for rank in range(2)
    ]
    assert batches[0]["input_ids"][:, :3].tolist() == [[1, 2, 3], [4, 5, 0]]
    assert batches[1]["input_ids"].tolist() == [[6, 7, 8, 9], [10, 11, 0, 0]]
    assert sum(int(b["num_tokens"]) for b in batches) == 11


@pytest.mark.parametrize(
    "example",
    [token_example([3, 4, 5]), ClassificationExample(input_ids=[3, 4, 5], label=1)],
    ids=["causal_lm", "classification"],
)
def test_a_rank_with_no_examples_gets_a_batch_that_counts_for_nothing(example: object) -> None:
    batch = distributed.RankCollate(lambda items: collate(items, 0), 1, 2)([example])
    assert batch["input_ids"].tolist() == [[3, 4, 5]]
    assert (batch["labels"] == distributed.IGNORE_INDEX).all()
    assert int(batch["num_tokens"]) == 0


def test_rank_collate_is_the_plain_collate_in_one_process() -> None:
    def collate_fn(items):
        return collate(items, 0)

    assert distributed.rank_collate(collate_fn, distributed.SINGLE_PROCESS) is collate_fn


# --- launch checks ---------------------------------------------------------------------------------


def test_a_multi_process_launch_without_a_strategy_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match=r"WORLD_SIZE=2.*train.strategy is none.*train.strategy=ddp"):
        distributed.init_distributed("none", torch.device("cpu"))


def test_an_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match=r"train.strategy is 'zero3'; choose one of none, ddp, fsdp"):
        distributed.init_distributed("zero3", torch.device("cpu"))


def test_a_malformed_launcher_variable_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match=r"WORLD_SIZE='two' is not an integer"):
        distributed.init_distributed("ddp", torch.device("cpu"))


def test_a_strategy_on_a_single_process_trains_on_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(name, raising=False)
    with pytest.warns(UserWarning, match="only this process was launched"):
        context = distributed.init_distributed("fsdp", torch.device("cpu"))
    assert context == distributed.SINGLE_PROCESS and not dist.is_initialized()


def test_rank_and_world_come_from_a_submitit_slurm_task(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("submitit", reason="submitit is part of the optional `cluster` extra")
    monkeypatch.setattr(
        os,
        "environ",
        {
            "SUBMITIT_EXECUTOR": "slurm",
            "SLURM_JOB_ID": "123",
            "SLURM_NTASKS": "8",
            "SLURM_JOB_NUM_NODES": "2",
            "SLURM_NODEID": "1",
            "SLURM_JOB_NODELIST": "gpu[07-08]",
            "SLURM_PROCID": "5",
            "SLURM_LOCALID": "1",
        },
    )
    assert distributed.launch_world_size() == 8
    assert distributed.process_rank() == 5 and not distributed.is_main_process()
    distributed._export_submitit_environment()
    assert {name: os.environ[name] for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")} == {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "gpu07",
    }
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_collectives_are_identities_in_one_process() -> None:
    assert distributed.all_reduce_sum([1.5, 2]) == [1.5, 2.0]
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.all_gather_object(3) == [3]
    assert distributed.run_on_main(lambda: 7) == 7
    with pytest.raises(OSError, match="disk full"):
        distributed.run_on_main(lambda: (_ for _ in ()).throw(OSError("disk full")))


# --- FSDP2 units -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "block_class"),
    [("tiny-llama", "LlamaDecoderLayer"), ("tiny-gpt2", "GPT2Block"), ("tiny-bert", "BertLayer")],
)
def test_each_transformer_block_is_a_unit_and_embeddings_stay_in_the_root(
    preset: str, block_class: str
) -> None:
    model = peft_model(preset, "prompt_tuning")
    blocks = distributed.transformer_blocks(model)
    assert [type(module).__name__ for _, module in blocks] == [block_class, block_class]
    embeddings = model.base_model.get_input_embeddings()
    assert all(embeddings not in set(module.modules()) for _, module in blocks)


def test_fsdp_refuses_a_unit_whose_trainable_parameters_mix_dtypes() -> None:
    model = peft_model("tiny-gpt2", "lora", dtype="bfloat16", bias="all")
    with pytest.raises(
        ValueError,
        match=r"GPT2Block.*share one dtype.*bfloat16.*float32.*model.dtype=float32 or train.strategy=ddp",
    ):
        distributed.check_shardable(model, [module for _, module in distributed.transformer_blocks(model)])


def test_fsdp_accepts_a_bfloat16_base_with_float32_lora() -> None:
    model = peft_model("tiny-llama", "lora", dtype="bfloat16")
    distributed.check_shardable(model, [module for _, module in distributed.transformer_blocks(model)])


@pytest.mark.usefixtures("one_rank_group")
@pytest.mark.parametrize("method", ["lora", "prompt_tuning", "prefix_tuning", "full"])
def test_sharded_model_matches_the_unsharded_one_forward_and_gradients(method: str) -> None:
    model, reference = peft_model("tiny-llama", method), peft_model("tiny-llama", method).double()
    randomize_trainable(model, seed=1)
    randomize_trainable(reference, seed=1)
    distributed.shard_model(model, torch.device("cpu"))
    ids = random_batch(seed=2)
    logits = model(input_ids=ids, use_cache=False).logits
    expected = reference(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(logits.double(), expected, rtol=TOLERANCE, atol=TOLERANCE)
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(3))
    (logits * weights).sum().backward()
    (expected * weights.double()).sum().backward()
    reference_grads = dict(reference.named_trainable_parameters())
    trained = model.named_trainable_parameters()
    assert trained and [name for name, _ in trained] == list(reference_grads)
    for name, parameter in trained:
        assert isinstance(parameter.grad, torch.distributed.tensor.DTensor), name
        torch.testing.assert_close(
            parameter.grad.full_tensor().double(), reference_grads[name].grad, rtol=TOLERANCE, atol=TOLERANCE
        )
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


@pytest.mark.usefixtures("one_rank_group")
def test_lora_layers_see_whole_plain_weights_inside_their_block() -> None:
    model = peft_model("tiny-llama", "lora")
    distributed.shard_model(model, torch.device("cpu"))
    seen: list[tuple[type, type, type, tuple[int, ...]]] = []

    def record(layer: LoRALinear, args: tuple) -> None:
        seen.append(
            (type(layer.base_layer.weight), type(layer.lora_A), type(layer.lora_B), tuple(layer.lora_A.shape))
        )

    layers = lora_layers(model)
    for layer in layers.values():
        layer.register_forward_pre_hook(record)
        assert isinstance(layer.lora_A, torch.distributed.tensor.DTensor)  # sharded between forwards
    model(input_ids=random_batch(seed=4), use_cache=False)
    assert len(seen) == len(layers) > 0
    for *kinds, shape in seen:
        assert not any(issubclass(kind, torch.distributed.tensor.DTensor) for kind in kinds)
        assert shape == (8, 64)


@pytest.mark.usefixtures("one_rank_group")
def test_clip_grad_norm_over_shards_matches_the_unsharded_norm() -> None:
    model = peft_model("tiny-llama", "full")
    reference = copy.deepcopy(model)
    distributed.shard_model(model, torch.device("cpu"))
    ids = random_batch(seed=5)
    for network in (model, reference):
        network(input_ids=ids, use_cache=False).logits.square().mean().backward()
    expected = torch.linalg.vector_norm(torch.stack([p.grad.double().norm() for p in reference.parameters()]))
    norm = distributed.clip_grad_norm(model.trainable_parameters(), max_norm=1e-3)
    assert isinstance(norm, float)
    assert norm == pytest.approx(float(expected), rel=1e-5)
    clipped = torch.linalg.vector_norm(torch.stack([p.grad.full_tensor().norm() for p in model.parameters()]))
    assert float(clipped) == pytest.approx(1e-3, rel=1e-3)


@pytest.mark.usefixtures("one_rank_group")
@pytest.mark.parametrize(
    ("preset", "method"), [("tiny-llama", "lora"), ("tiny-gpt2", "full"), ("tiny-llama", "prefix_tuning")]
)
def test_adapter_saved_from_shards_is_the_unsharded_file(preset: str, method: str, tmp_path: Path) -> None:
    model, reference = peft_model(preset, method), peft_model(preset, method)
    randomize_trainable(model, seed=6)
    randomize_trainable(reference, seed=6)
    reference.save_adapter(tmp_path / "plain")
    distributed.shard_model(model, torch.device("cpu"))
    sharded_before = {name: type(p) for name, p in model.named_parameters()}
    with distributed.full_trainable_parameters(model):
        if method == "full":  # GPT-2 ties its output head to the input embeddings: still one tensor
            assert model.base_model.lm_head.weight is model.base_model.transformer.wte.weight
        model.save_adapter(tmp_path / "sharded")
    assert {name: type(p) for name, p in model.named_parameters()} == sharded_before
    weights = "model.safetensors" if method == "full" else "adapter_model.safetensors"
    plain, sharded = (
        load_file(str(tmp_path / "plain" / weights)),
        load_file(str(tmp_path / "sharded" / weights)),
    )
    assert sorted(plain) == sorted(sharded)
    for key in plain:
        assert torch.equal(plain[key], sharded[key]), key
    assert json.loads((tmp_path / "plain/adapter_config.json").read_text()) == json.loads(
        (tmp_path / "sharded/adapter_config.json").read_text()
    )


# --- sharded checkpoints ---------------------------------------------------------------------------


def optimiser_for(model: torch.nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))


def take_steps(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: object, seed: int, steps: int = 2
) -> None:
    for step in range(steps):
        model(input_ids=random_batch(seed + step), use_cache=False).logits.square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()


def whole(tensor: torch.Tensor) -> torch.Tensor:
    full_tensor = getattr(tensor, "full_tensor", None)
    return full_tensor() if callable(full_tensor) else tensor


def save_sharded_run(tmp_path: Path) -> tuple[Path, peftlab.PeftLabModel, torch.optim.Optimizer]:
    """A LoRA model trained 2 steps under FSDP and checkpointed by ``save_sharded_checkpoint``."""
    model = peft_model("tiny-llama", "lora")
    distributed.shard_model(model, torch.device("cpu"))
    optimizer, scheduler = optimiser_for(model)
    take_steps(model, optimizer, scheduler, seed=7)
    path = distributed.save_sharded_checkpoint(
        tmp_path / "run", model, optimizer, scheduler, Progress(2, 0, 2, 55)
    )
    return path, model, optimizer


@pytest.mark.usefixtures("one_rank_group")
def test_sharded_checkpoint_loads_into_one_process_and_continues_identically(tmp_path: Path) -> None:
    path, sharded, sharded_optimizer = save_sharded_run(tmp_path)
    manifest = verify_checkpoint(path)
    assert manifest["layout"] == distributed.SHARDED_LAYOUT and manifest["step"] == 2
    assert latest_checkpoint(tmp_path / "run") == (path, [])
    expected = {name: whole(p).detach().clone() for name, p in sharded.named_trainable_parameters()}
    dist.destroy_process_group()  # loading needs no process group
    try:
        model = peft_model("tiny-llama", "lora")
        optimizer, scheduler = optimiser_for(model)
        progress = load_checkpoint(path, model, optimizer, scheduler)
        assert progress == Progress(2, 0, 2, 55) and scheduler.last_epoch == 2
        for name, parameter in model.named_trainable_parameters():
            assert torch.equal(parameter, expected[name]), name
        saved_state = sharded_optimizer.state_dict()[
            "state"
        ]  # both optimisers list the same parameters in order
        assert sorted(optimizer.state_dict()["state"]) == sorted(saved_state)
        for index, state in optimizer.state_dict()["state"].items():
            for key in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(state[key], whole(saved_state[index][key]), rtol=0, atol=0)
    finally:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)


@pytest.mark.usefixtures("one_rank_group")
def test_a_damaged_shard_is_named_and_skipped(tmp_path: Path) -> None:
    path, _, _ = save_sharded_run(tmp_path)
    shard = next((path / distributed.SHARDED_DIR).glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{shard.name}: checksum does not match"):
        verify_checkpoint(path)
    found, skipped = latest_checkpoint(tmp_path / "run")
    assert found is None and shard.name in skipped[0]


@pytest.mark.usefixtures("one_rank_group")
def test_a_sharded_checkpoint_of_another_method_is_refused_by_name(tmp_path: Path) -> None:
    path, _, _ = save_sharded_run(tmp_path)
    other = peft_model("tiny-llama", "prompt_tuning")
    with pytest.raises(CheckpointError, match=r"sharded: unknown tensor .*lora_A.*different model or method"):
        load_checkpoint(path, other)


# --- launcher configs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("launcher", "plugin", "fields"),
    [
        (
            "slurm",
            "hydra_plugins.hydra_submitit_launcher",
            {"tasks_per_node": 8, "gpus_per_node": 8, "nodes": 1},
        ),
        ("local_parallel", "hydra_plugins.hydra_joblib_launcher", {"n_jobs": 2, "prefer": "processes"}),
    ],
)
def test_launcher_configs_compose_on_the_plugin_schemas(launcher: str, plugin: str, fields: dict) -> None:
    pytest.importorskip(plugin, reason="the launcher plugins are the optional `cluster` extra")
    from hydra import compose, initialize_config_dir

    from peftlab.hydra_app import CONFIG_PATH

    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
        with pytest.raises(Exception, match="tasks_per_nod"):
            compose(
                "config",
                overrides=[f"hydra/launcher={launcher}", "hydra.launcher.tasks_per_nod=1"],
                return_hydra_config=True,
            )
    launcher_cfg = cfg.hydra.launcher
    assert launcher_cfg._target_.startswith(plugin)
    assert {name: launcher_cfg[name] for name in fields} == fields


@pytest.mark.usefixtures("one_rank_group")
def test_resuming_on_another_number_of_ranks_says_how_to_relaunch(tmp_path: Path) -> None:
    path, _, _ = save_sharded_run(tmp_path)
    state = torch.load(path / "state.pt", weights_only=True)
    torch.save({**state, "world_size": 4}, path / "state.pt")
    model = peft_model("tiny-llama", "lora")
    optimizer, scheduler = optimiser_for(model)
    with pytest.raises(
        CheckpointError, match=r"written by 4 rank\(s\) but this run has 1.*torchrun --nproc_per_node=4"
    ):
        distributed.load_sharded_checkpoint(path, model, optimizer, scheduler)
    distributed.load_sharded_checkpoint(
        path, model
    )  # without an optimiser it only reads weights: any world size
