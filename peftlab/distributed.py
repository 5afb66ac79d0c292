"""Training on several processes: ``torchrun`` (one or many nodes) or SLURM tasks, with DDP or FSDP2.

``train.strategy`` picks how the ranks share the work:

- ``none``: one process (the default); a multi-process launch with it is refused.
- ``ddp``: every rank holds the whole model; ``DistributedDataParallel`` all-reduces the gradients of the
  trainable parameters only (the frozen base never gets gradients or optimiser state).
- ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``) shards every parameter, frozen base included,
  over the ranks. Each transformer block is one sharded unit, then the whole model is the root unit.
  A LoRA layer's ``A``/``B`` live inside the block of their base weight, so they are all-gathered
  together and the LoRA kernels see whole, plain tensors inside the block's forward. Soft prompts and
  prefix encoders are small and stay in the root unit. Only trainable parameters get gradients and
  optimiser state, each rank holding its shard.

Everything else in a run is rank-aware through this module:

- data: ``train.batch_size`` is per rank; a global batch of ``batch_size × world_size`` examples is
  drawn in the single-process order and split into contiguous shares (``shard_items``), so no example is
  seen twice and the run follows the same curve as one process with the global batch;
- the loss: each rank scales its summed loss by ``world_size / global_targets`` (DDP and FSDP average
  gradients over the ranks), so the gradient is the mean over every target token of the global batch;
- metrics: sums are all-reduced (``all_reduce_sum``) before they are logged;
- files: only rank 0 writes events, results, adapters and W&B; adapters are gathered from the shards
  first (``full_trainable_parameters``), so the file equals what one process would write;
- checkpoints: ``torch.distributed.checkpoint`` writes each rank's shard of the trainable parameters and
  optimiser state in parallel (``save_sharded_checkpoint``); they load back under any number of ranks,
  one process included (DCP reshards on load).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

STRATEGIES = ("none", "ddp", "fsdp")
# The checkpoint layout ``save_sharded_checkpoint`` writes (``manifest.json`` field ``layout``).
SHARDED_LAYOUT = "sharded"
# The DCP folder inside a sharded checkpoint, and the file DCP always writes into it.
SHARDED_DIR = "sharded"
SHARDED_METADATA = f"{SHARDED_DIR}/.metadata"
IGNORE_INDEX = -100
# How long a rank waits for the others in a collective before failing (a crashed peer, a hung job).
COLLECTIVE_TIMEOUT = timedelta(minutes=30)
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistributedContext:
    """Which process this is among how many, and how the model is shared between them."""

    strategy: str = "none"
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes files."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """True when several processes train together."""
        return self.world_size > 1

    def device(self, device: torch.device) -> torch.device:
        """``device`` made specific to this rank: ``cuda`` becomes ``cuda:<local_rank>``."""
        if device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device


SINGLE_PROCESS = DistributedContext()


# --- process group ---------------------------------------------------------------------------------


def check_strategy(strategy: str) -> str:
    """Return ``strategy`` if it is one of ``STRATEGIES``; raise ``ValueError`` listing them otherwise."""
    if strategy not in STRATEGIES:
        raise ValueError(f"train.strategy is {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    return strategy


def launch_world_size() -> int:
    """How many processes the launcher started: ``WORLD_SIZE`` (torchrun), the task count of a submitit
    SLURM/local job, else 1."""
    if "WORLD_SIZE" in os.environ:
        return _int_variable("WORLD_SIZE")
    if os.environ.get("SUBMITIT_EXECUTOR"):
        return _submitit_environment().world_size
    return 1


def process_rank() -> int:
    """This process's rank: from the process group once it exists, else from the launcher's variables."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    if "RANK" in os.environ:
        return _int_variable("RANK")
    if os.environ.get("SUBMITIT_EXECUTOR"):
        return _submitit_environment().rank
    return 0


def is_main_process() -> bool:
    """True on rank 0 (and in a single-process run)."""
    return process_rank() == 0


def init_distributed(strategy: str, device: torch.device) -> DistributedContext:
    """Join the process group of this launch (creating it on first use) and describe this rank.

    ``torchrun`` exports ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
    a job started by the submitit launcher (SLURM or local) gets them from ``submitit``. The backend is
    NCCL on CUDA, gloo on the CPU. Calling it again returns the same description.
    """
    check_strategy(strategy)
    world = launch_world_size() if not dist.is_initialized() else dist.get_world_size()
    if world > 1 and strategy == "none":
        raise ValueError(
            f"this process is one of {world} started together (WORLD_SIZE={world}) "
            "but train.strategy is none; "
            "set train.strategy=ddp or train.strategy=fsdp, or launch a single process"
        )
    if strategy == "none":
        return SINGLE_PROCESS
    if world == 1:
        warnings.warn(
            f"train.strategy={strategy} but only this process was launched; training on one process",
            stacklevel=2,
        )
        return SINGLE_PROCESS
    if not dist.is_initialized():
        if "WORLD_SIZE" not in os.environ:
            _export_submitit_environment()
        missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ and name != "LOCAL_RANK"]
        if missing:
            raise ValueError(
                f"train.strategy={strategy} under a {world}-process launch, but {', '.join(missing)} "
                "is not set; launch with `torchrun --nproc_per_node=N -m peftlab.cli train ...`"
            )
        local_rank = _int_variable("LOCAL_RANK") if "LOCAL_RANK" in os.environ else 0
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
        atexit.register(_destroy_process_group)
    local_rank = _int_variable("LOCAL_RANK") if "LOCAL_RANK" in os.environ else dist.get_rank()
    return DistributedContext(strategy, dist.get_rank(), local_rank, dist.get_world_size())


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _int_variable(name: str) -> int:
    value = os.environ[name]
    try:
        number = int(value)
    except ValueError:
        raise ValueError(
            f"environment variable {name}={value!r} is not an integer (set by the launcher)"
        ) from None
    if number < 0:
        raise ValueError(f"environment variable {name}={value!r} is negative (set by the launcher)")
    return number


def _submitit_environment() -> Any:
    try:
        from submitit.helpers import TorchDistributedEnvironment
    except ImportError:
        raise ValueError(
            "this process runs in a submitit job but submitit is not installed; "
            'install the cluster extra: pip install -e ".[cluster]"'
        ) from None
    return TorchDistributedEnvironment()


def _export_submitit_environment() -> None:
    """Set torchrun's variables from the submitit job (one task per GPU; CUDA_VISIBLE_DEVICES untouched)."""
    _submitit_environment().export(set_cuda_visible_devices=False)


# --- collectives (each is a no-op in a single process) ----------------------------------------------


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait until every rank gets here."""
    if _active():
        dist.barrier()


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """The sums over all ranks of ``values`` (one collective, float64: counts stay exact up to 2^53)."""
    if not _active():
        return [float(v) for v in values]
    device = _collective_device()
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_gather_object(value: Any) -> list[Any]:
    """``value`` from every rank, in rank order."""
    if not _active():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value``, on every rank."""
    if not _active():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def run_on_main(action: Callable[[], Any]) -> Any:
    """Run ``action`` on rank 0 only; if it raises, every rank raises (nobody waits forever for rank 0).

    Returns ``action``'s result on rank 0 and None elsewhere.
    """
    result, failure = None, None
    if is_main_process():
        try:
            result = action()
        except Exception as error:  # handed to every rank below, then re-raised here
            failure = error
    message = broadcast_object(None if failure is None else f"{type(failure).__name__}: {failure}")
    if failure is not None:
        raise failure
    if message is not None:
        raise RuntimeError(f"rank 0 failed: {message}")
    return result


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# --- data ------------------------------------------------------------------------------------------


def shard_items(items: Sequence[Any], rank: int, world_size: int) -> list[Any]:
    """Rank ``rank``'s contiguous share of ``items``: the first ``len % world_size`` ranks get one more.

    The shares of all ranks concatenate back to ``items``: nothing is dropped or seen twice.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size} processes")
    base, extra = divmod(len(items), world_size)
    start = rank * base + min(rank, extra)
    stop = start + base + (1 if rank < extra else 0)
    return list(items[start:stop])


class RankCollate:
    """Collates this rank's share of a global batch.

    A rank whose share is empty (a last batch smaller than the world) still has to run forward and
    backward with the others, so it gets the global batch's first example with every label ignored and
    ``num_tokens`` 0: it adds nothing to the loss, the gradients or the counts.
    """

    def __init__(
        self, collate_fn: Callable[[Sequence[Any]], dict[str, torch.Tensor]], rank: int, world_size: int
    ) -> None:
        self.collate_fn = collate_fn
        self.rank = rank
        self.world_size = world_size

    def __call__(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        """The batch of this rank's share of ``items`` (the global batch)."""
        share = shard_items(items, self.rank, self.world_size)
        if share:
            return self.collate_fn(share)
        return ignored_batch(self.collate_fn(list(items[:1])))


def ignored_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``batch`` with every label set to the ignore index and no tokens counted."""
    batch = dict(batch)
    batch["labels"] = torch.full_like(batch["labels"], IGNORE_INDEX)
    batch["num_tokens"] = torch.zeros_like(torch.as_tensor(batch["num_tokens"]))
    return batch


def rank_collate(
    collate_fn: Callable[[Sequence[Any]], dict[str, torch.Tensor]], context: DistributedContext
) -> Callable[[Sequence[Any]], dict[str, torch.Tensor]]:
    """``collate_fn`` itself in a single process; else one collating this rank's share (``RankCollate``)."""
    if not context.is_distributed:
        return collate_fn
    return RankCollate(collate_fn, context.rank, context.world_size)


def loss_scale(context: DistributedContext) -> float:
    """The factor on each rank's summed loss: ``world_size``, undoing the gradient averaging of DDP/FSDP."""
    return float(context.world_size) if context.is_distributed else 1.0


# --- model wrapping --------------------------------------------------------------------------------


def transformer_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules FSDP shards as units: those whose class is in a ``transformers`` model's
    ``_no_split_modules`` (decoder layers, GPT-2 blocks, BERT layers), except any that holds the input or
    output embeddings (prompt tuning calls the input embeddings outside their block's forward)."""
    class_names: set[str] = set()
    for module in model.modules():
        class_names.update(getattr(module, "_no_split_modules", None) or [])
    embeddings: list[nn.Module] = []
    for module in model.modules():
        for getter in ("get_input_embeddings", "get_output_embeddings"):
            function = getattr(module, getter, None)
            found = function() if callable(function) and hasattr(module, "_no_split_modules") else None
            if isinstance(found, nn.Module):
                embeddings.append(found)
    blocks = []
    for name, module in model.named_modules():
        if not name or type(module).__name__ not in class_names:
            continue
        inner = set(module.modules())
        if any(embedding in inner for embedding in embeddings):
            continue
        blocks.append((name, module))
    return blocks


def wrap_model(model: nn.Module, context: DistributedContext, device: torch.device) -> nn.Module:
    """The module the training step forwards through: ``model`` itself (single process, or sharded in
    place by FSDP2) or a ``DistributedDataParallel`` around it. Call after ``model.to(device)`` and before
    building the optimiser (FSDP replaces the parameters with their shards)."""
    if not context.is_distributed:
        return model
    if context.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = (
            [device.index if device.index is not None else context.local_rank]
            if device.type == "cuda"
            else None
        )
        return DistributedDataParallel(model, device_ids=device_ids)
    if context.strategy == "fsdp":
        shard_model(model, device)
        return model
    raise ValueError(f"train.strategy is {context.strategy!r}; choose one of {', '.join(STRATEGIES)}")


def shard_model(model: nn.Module, device: torch.device) -> None:
    """FSDP2 in place: each transformer block one unit (bottom-up), then ``model`` as the root unit.

    Every rank must start from the same weights; rank 0's parameters and buffers are broadcast first.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    blocks = transformer_blocks(model)
    check_shardable(model, [module for _, module in blocks])
    broadcast_module_states(model)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for _, block in reversed(blocks):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def check_shardable(model: nn.Module, blocks: Sequence[nn.Module]) -> None:
    """FSDP2 needs one dtype for the trainable parameters of a unit; raise ``ValueError`` before sharding."""
    assigned: set[int] = set()
    units = [*blocks, model]
    for unit in units:
        dtypes: dict[torch.dtype, str] = {}
        for name, parameter in unit.named_parameters():
            if id(parameter) in assigned:
                continue
            assigned.add(id(parameter))
            if parameter.requires_grad:
                dtypes.setdefault(parameter.dtype, name)
        if len(dtypes) > 1:
            examples = ", ".join(
                f"{name} ({str(dtype).removeprefix('torch.')})" for dtype, name in dtypes.items()
            )
            raise ValueError(
                f"train.strategy=fsdp shards {type(unit).__name__} as one unit, and FSDP2 needs its "
                f"trainable parameters to share one dtype, but they mix {examples}; "
                "use model.dtype=float32 or train.strategy=ddp"
            )


def broadcast_module_states(model: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if not _active():
        return
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)


@contextlib.contextmanager
def gradient_sync(engine: nn.Module, enabled: bool) -> Iterator[None]:
    """Inside, DDP skips the gradient all-reduce when ``enabled`` is False (the micro-batches before the
    last of a step); other engines always reduce (FSDP2 reduce-scatters every micro-batch, keeping
    gradient memory sharded)."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(engine, DistributedDataParallel) and not enabled:
        with engine.no_sync():
            yield
    else:
        yield


def clip_grad_norm(parameters: Iterable[nn.Parameter], max_norm: float) -> float:
    """Clip gradients to ``max_norm`` and return their total norm before clipping, over all shards."""
    parameters = [p for p in parameters if p.grad is not None]
    if not parameters:
        return 0.0
    total = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    full_tensor = getattr(total, "full_tensor", None)
    return float(full_tensor() if callable(full_tensor) else total)


def _is_sharded(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


@contextlib.contextmanager
def full_trainable_parameters(model: nn.Module) -> Iterator[None]:
    """Inside, every sharded trainable parameter of ``model`` is replaced by its whole tensor.

    A collective: every rank must enter (in the same order). Saving an adapter inside it writes exactly
    the file a single process writes. Parameters tied to several modules stay tied. Leaving restores the
    shards FSDP manages; nothing changes for unsharded models.
    """
    replaced: list[tuple[nn.Module, str, nn.Parameter]] = []
    gathered: dict[int, nn.Parameter] = {}
    try:
        with torch.no_grad():
            for module in model.modules():
                for name, parameter in list(module._parameters.items()):
                    if parameter is None or not parameter.requires_grad or not _is_sharded(parameter):
                        continue
                    whole = gathered.get(id(parameter))
                    if whole is None:
                        whole = nn.Parameter(parameter.full_tensor().detach().clone(), requires_grad=True)
                        gathered[id(parameter)] = whole
                    replaced.append((module, name, parameter))
                    module._parameters[name] = whole
        yield
    finally:
        for module, name, parameter in reversed(replaced):
            module._parameters[name] = parameter


# --- sharded checkpoints ---------------------------------------------------------------------------


def _state_dict_options() -> Any:
    """Trainable parameters only; loading checks the names itself (``_check_saved_names``), so not strict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, strict=False)


def sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """``{"model": ..., "optimizer": ...}``: the trainable parameters (and optimiser state) as this rank
    holds them, keyed by parameter name: what DCP writes and reads."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        return {"model": get_model_state_dict(model, options=_state_dict_options())}
    model_state, optimizer_state = get_state_dict(model, optimizer, options=_state_dict_options())
    return {"model": model_state, "optimizer": optimizer_state}


def save_sharded_checkpoint(
    run_dir: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    progress: Any,
    scaler: Any = None,
    keep: int = 2,
) -> Path:
    """Write ``checkpoints/step-NNNNNN/`` from every rank: the DCP shards of the trainable parameters and
    optimiser state in ``sharded/``, and (rank 0) ``state.pt`` with the scheduler, scaler, progress and
    every rank's RNG state, then ``manifest.json`` (``layout: sharded``) with each file's size and SHA-256.

    Assembled under a temporary name and renamed into place by rank 0, like ``peftlab.checkpoint``;
    the older checkpoints beyond ``keep`` are deleted. Multi-node runs need ``output_dir`` on a shared
    file system.
    """
    import torch.distributed.checkpoint as dcp

    from peftlab import checkpoint as single

    if keep < 1:
        raise ValueError(f"train.keep_checkpoints is {keep}; keep at least 1 checkpoint")
    root = Path(run_dir) / single.CHECKPOINTS_DIR
    final = root / single.step_dir_name(progress.step)
    temp = root / f".{final.name}.tmp-sharded"

    def make_temp() -> None:
        root.mkdir(parents=True, exist_ok=True)
        for leftover in root.glob(".step-*"):  # an interrupted write's; rank 0 holds the run folder's lock
            shutil.rmtree(leftover, ignore_errors=True)
        temp.mkdir()

    run_on_main(make_temp)
    dcp.save(sharded_state(model, optimizer), checkpoint_id=str(temp / SHARDED_DIR))
    rng_states = all_gather_object(single._rng_state())

    def finish() -> Path:
        try:
            _write_sharded_manifest(temp, scheduler, progress, scaler, rng_states)
            single._replace_dir(temp, final)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        for old in single.list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    run_on_main(finish)
    return final


def _write_sharded_manifest(
    directory: Path, scheduler: Any, progress: Any, scaler: Any, rng_states: list[Any]
) -> None:
    from peftlab import checkpoint as single

    state = {
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_states[0],
        "rank_rng": rng_states,
        "progress": vars(progress).copy(),
        "world_size": len(rng_states),
    }
    torch.save(state, directory / single.STATE_FILE)
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = path.relative_to(directory).as_posix()
        single._fsync_file(path)
        files[name] = {"bytes": path.stat().st_size, "sha256": single._sha256(path)}
    manifest = {
        "format": single.FORMAT_VERSION,
        "layout": SHARDED_LAYOUT,
        "step": progress.step,
        "files": files,
    }
    (directory / single.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    single._fsync_file(directory / single.MANIFEST_FILE)
    single._fsync_dir(directory)


def sharded_files_problem(files: dict[str, Any]) -> str | None:
    """Why a sharded checkpoint's manifest ``files`` cannot be right, or None."""
    from peftlab.checkpoint import STATE_FILE

    required = {STATE_FILE, SHARDED_METADATA}
    if not required <= set(files):
        return f"field 'files' must list {', '.join(sorted(required))} and the DCP shards"
    outside = [name for name in files if name != STATE_FILE and not name.startswith(SHARDED_DIR + "/")]
    if outside or any(".." in Path(name).parts for name in files):
        return (
            f"field 'files' names {(outside or list(files))[0]!r}, which is not part of a sharded checkpoint"
        )
    return None


def load_sharded_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    restore_rng: bool = True,
) -> Any:
    """Restore a checkpoint ``save_sharded_checkpoint`` wrote (verify it first), under any number of ranks.

    DCP reads each rank's part of every tensor, whatever world size wrote it; one process reads all of it.
    Returns the ``Progress`` it holds. Raises ``CheckpointError`` naming the checkpoint when it does not
    fit the model (another method or model).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    from peftlab.checkpoint import STATE_FILE, CheckpointError, Progress, _set_rng_state

    path = Path(path)
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types on a damaged or foreign file
        raise CheckpointError(f"{path / STATE_FILE}: cannot load ({type(error).__name__}: {error})") from None
    if optimizer is not None:
        check_resume_world_size(path, int(state.get("world_size", 1)))
    target = sharded_state(model, optimizer)
    _check_saved_names(path, target["model"])
    try:
        with warnings.catch_warnings():  # one process reading a sharded checkpoint is intended
            warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
            dcp.load(target, checkpoint_id=str(path / SHARDED_DIR), no_dist=not dist.is_initialized())
    except Exception as error:  # DCP raises CheckpointException and others for a foreign or damaged folder
        raise CheckpointError(
            f"{path / SHARDED_DIR}: cannot load ({type(error).__name__}: {error})"
        ) from None
    if optimizer is None:
        set_model_state_dict(model, target["model"], options=_state_dict_options())
    else:
        set_state_dict(
            model,
            optimizer,
            model_state_dict=target["model"],
            optim_state_dict=target["optimizer"],
            options=_state_dict_options(),
        )
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if restore_rng:
        rank_states = state.get("rank_rng") or [state["rng"]]
        rank = process_rank()
        _set_rng_state(rank_states[rank] if rank < len(rank_states) else state["rng"])
    return Progress(**state["progress"])


def check_resume_world_size(path: str | Path, saved_world_size: int) -> None:
    """A run resumes on as many ranks as wrote its checkpoint: its data position counts global batches of
    ``batch_size × world_size`` examples. Raise ``CheckpointError`` saying how to relaunch otherwise."""
    from peftlab.checkpoint import CheckpointError

    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if saved_world_size != world:
        launch = (
            "one process"
            if saved_world_size == 1
            else f"torchrun --nproc_per_node={saved_world_size} (in all)"
        )
        raise CheckpointError(
            f"{path}: written by {saved_world_size} rank(s) but this run has {world}; "
            "its data position counts "
            f"global batches of train.batch_size × {saved_world_size} examples, so resume it with {launch}"
        )


def _check_saved_names(path: Path, expected: dict[str, Any]) -> None:
    """The checkpoint must hold exactly the model's trainable parameters, with their shapes."""
    from torch.distributed.checkpoint import FileSystemReader

    from peftlab.checkpoint import CheckpointError

    try:
        metadata = FileSystemReader(str(path / SHARDED_DIR)).read_metadata()
    except Exception as error:  # a missing or damaged .metadata file
        raise CheckpointError(
            f"{path / SHARDED_METADATA}: unreadable ({type(error).__name__}: {error})"
        ) from None
    saved = {
        key.removeprefix("model."): item
        for key, item in metadata.state_dict_metadata.items()
        if key.startswith("model.")
    }
    unknown = sorted(set(saved) - set(expected))
    missing = sorted(set(expected) - set(saved))
    if unknown or missing:
        detail = f"unknown tensor {unknown[0]!r}" if unknown else f"tensor {missing[0]!r} is missing"
        raise CheckpointError(
            f"{path / SHARDED_DIR}: {detail}; the checkpoint was made with a different model or method"
        )
    for name, tensor in expected.items():
        size = tuple(getattr(saved[name], "size", ()))
        if size != tuple(tensor.shape):
            raise CheckpointError(
                f"{path / SHARDED_DIR}: tensor {name!r} has shape {size}, "
                f"the model expects {tuple(tensor.shape)}"
            )


__all__ = [
    "SHARDED_LAYOUT",
    "SINGLE_PROCESS",
    "STRATEGIES",
    "DistributedContext",
    "RankCollate",
    "all_gather_object",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "check_resume_world_size",
    "check_strategy",
    "clip_grad_norm",
    "full_trainable_parameters",
    "gradient_sync",
    "init_distributed",
    "is_main_process",
    "load_sharded_checkpoint",
    "loss_scale",
    "process_rank",
    "rank_collate",
    "run_on_main",
    "save_sharded_checkpoint",
    "shard_items",
    "shard_model",
    "transformer_blocks",
    "wrap_model",
]
