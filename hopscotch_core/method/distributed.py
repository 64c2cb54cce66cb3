"""One pipeline over N processes with torch.distributed (started by torchrun): the process group and every
collective the pipeline uses, in one place. Nothing else in the package calls torch.distributed.

    torchrun --nproc-per-node 4 -m hopscotch_core run --model default --k 4 --mode paper
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 -m hopscotch_core run ...

    group = distributed.init(timeout_s=1800)      # from torchrun's environment; LOCAL (one process) without it
    group.rank, group.world, group.main, group.device
    group.on_main(fn)                             # fn on rank 0 (the run store), its result (or error) everywhere
    group.shard_map(items, fn, on_result, should_stop)   # items over the ranks, results in item order everywhere
    group.all_reduce_sum(tensor)                  # gradients of the scalars, loss sums
    group.any(flag)                               # a stop asked on any rank stops all at the same step

Rules the pipeline keeps: every rank runs the same control flow on the same data (rank 0 reads the run store and
broadcasts it), so collectives always match; rank 0 alone writes. Backends: gloo on CPU, nccl on CUDA (one GPU per
process: cuda:LOCAL_RANK). A rank that dies closes its sockets: the others fail at their next collective at once
(gloo) with a DistributedError; a rank that hangs is caught by the process-group timeout (`timeout_s`, default
1800 s, the `--dist-timeout` flag). torchrun also tears the group down when a worker exits. Every error that is the
same on all ranks (bad settings, settings that differ between ranks) is a SharedError: the CLI prints it once.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import DistributedError, HopscotchError, SharedError

ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT_S = 1800.0
CHECKED = (HopscotchError, ValueError, OSError)  # the errors the CLI reports as one `error:` line


def launched() -> bool:
    """Whether this process was started by torchrun (or by hand with its environment) with more than one rank."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def _env_int(name: str) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"{name}={value!r} in the environment is not a whole number; start the processes "
                               "with torchrun (torchrun --nproc-per-node N -m hopscotch_core run ...)") from None


class Group:
    """The ranks of one run (world 1: this process alone, no torch.distributed involved)."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, backend: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S):
        self.rank, self.world, self.local_rank, self.backend = rank, world, local_rank, backend
        self.timeout_s = timeout_s

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def comm_device(self) -> str:
        return f"cuda:{self.local_rank}" if self.backend == "nccl" else "cpu"

    def device_for(self, device: str) -> str:
        """The device this rank computes on: cuda:LOCAL_RANK under nccl (for 'auto' and 'cuda'), else `device`."""
        if self.backend == "nccl" and str(device) in ("auto", "cuda"):
            return self.comm_device
        return device

    def __repr__(self) -> str:
        return f"Group(rank={self.rank}, world={self.world}, backend={self.backend})"

    # -------------------------------------------------------------------------------------------- collectives
    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except HopscotchError:
            raise
        except Exception as e:  # noqa: BLE001 - gloo/nccl raise RuntimeError (DistBackendError) and friends
            cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if len(cause) > 240:
                cause = cause[:240] + " ..."
            raise DistributedError(
                f"rank {self.rank}: lost contact with the other processes during {what} (another process died, "
                f"the network failed or it waited longer than {self.timeout_s:g} s): {cause}. Finished work is "
                "saved: run the same command again, with any number of processes, to resume") from None

    def all_gather(self, obj: Any) -> list[Any]:
        """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        self._call("an exchange of results", lambda: dist.all_gather_object(out, obj))
        return out

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Rank `src`'s obj on every rank."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj if self.rank == src else None]
        self._call("a broadcast from rank 0", lambda: dist.broadcast_object_list(box, src=src))
        return box[0]

    def all_reduce_sum(self, tensor):
        """Sum `tensor` over the ranks, in place (returned)."""
        if self.world == 1:
            return tensor
        import torch.distributed as dist

        dev = tensor.device
        buf = tensor if str(dev) == self.comm_device or (self.backend != "nccl" and dev.type == "cpu") \
            else tensor.to(self.comm_device)
        self._call("a gradient all-reduce", lambda: dist.all_reduce(buf, op=dist.ReduceOp.SUM))
        if buf is not tensor:
            tensor.copy_(buf.to(dev))
        return tensor

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any (a stop asked on one rank stops all at the same step)."""
        if self.world == 1:
            return bool(flag)
        import torch

        t = torch.tensor([1.0 if flag else 0.0], device=self.comm_device)
        return bool(self.all_reduce_sum(t).item() > 0)

    def barrier(self) -> None:
        """Wait for every rank (bounded by the process-group timeout)."""
        if self.world == 1:
            return
        import torch.distributed as dist

        if self.backend == "gloo":
            self._call("a barrier", lambda: dist.monitored_barrier(
                timeout=datetime.timedelta(seconds=self.timeout_s), wait_all_ranks=True))
        else:
            self._call("a barrier", lambda: dist.barrier())

    # -------------------------------------------------------------------------------------------- patterns
    def on_main(self, fn: Callable[[], Any]) -> Any:
        """fn() on rank 0 (what reads or writes the run store); its result on every rank. An error on rank 0 is
        raised on every rank (rank 0: the error itself; others: a SharedError with its message)."""
        if self.world == 1:
            return fn()
        result, error = None, None
        if self.main:
            try:
                result = fn()
            except CHECKED as e:
                error = e
        ok, payload = self.broadcast((True, result) if error is None else (False, str(error)))
        if error is not None:
            raise error
        if not ok:
            raise SharedError(payload)
        return payload

    def check_all(self, fn: Callable[[], Any]) -> Any:
        """fn() on every rank; when it fails on any rank, every rank raises one SharedError (the first failing
        rank's message), so a check refuses the run everywhere with one message."""
        if self.world == 1:
            return fn()
        result, msg = None, None
        try:
            result = fn()
        except CHECKED as e:
            msg = str(e)
        failed = [(r, m) for r, m in enumerate(self.all_gather(msg)) if m is not None]
        if failed:
            r, m = failed[0]
            raise SharedError(m if r == 0 else f"rank {r}: {m}")
        return result

    def same(self, value: Any, what: str) -> None:
        """Refuse (on every rank, one message) when `value` (JSON-able) differs between ranks."""
        if self.world == 1:
            return
        digest = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]
        hashes = self.all_gather(digest)
        odd = [r for r, h in enumerate(hashes) if h != hashes[0]]
        if odd:
            theirs = self.all_gather(value)
            diff = _diff(theirs[0], theirs[odd[0]])
            raise SharedError(f"the {self.world} processes were started with different {what}: rank(s) "
                              f"{', '.join(map(str, odd))} differ from rank 0 ({diff}); start every process with "
                              "the same command")

    def shard_map(self, items: Sequence[Any], fn: Callable[[Any], Any],
                  on_result: Callable[[Any, Any], None] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> bool:
        """fn(item) for every item, spread over the ranks: step s gives item s * world + rank to each rank (ranks
        past the end wait), then every rank receives the step's results and calls on_result(item, result) in item
        order. Deterministic: the same items give the same assignment. Returns False when should_stop ended it."""
        items = list(items)
        for start in range(0, len(items), self.world):
            if should_stop is not None and should_stop():
                return False
            k = start + self.rank
            mine = (k, fn(items[k])) if k < len(items) else None
            for got in sorted((g for g in self.all_gather(mine) if g is not None), key=lambda g: g[0]):
                if on_result is not None:
                    on_result(items[got[0]], got[1])
        return True


LOCAL = Group()


def _diff(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        return "; ".join(_diff(a.get(k), b.get(k), f"{k}: ") if isinstance(a.get(k), dict) and isinstance(b.get(k), dict)
                         else f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys[:5])
    return f"{prefix}{a!r} vs {b!r}"


def init(timeout_s: float | None = None, device: str = "auto") -> Group:
    """The process group from torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), or
    LOCAL when this process was not started by torchrun. Backend: nccl when this rank computes on CUDA, else gloo."""
    if not launched():
        return LOCAL
    world, rank = _env_int("WORLD_SIZE"), _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else 0
    if world < 1 or not 0 <= rank < world:
        raise DistributedError(f"RANK={rank} and WORLD_SIZE={world} in the environment do not fit (need 0 <= "
                               "RANK < WORLD_SIZE); start the processes with torchrun")
    timeout_s = float(timeout_s if timeout_s is not None else DEFAULT_TIMEOUT_S)
    if timeout_s <= 0:
        raise DistributedError(f"--dist-timeout must be a positive number of seconds, not {timeout_s:g}")
    if world == 1:
        return LOCAL
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise DistributedError(f"WORLD_SIZE={world} is set but {' and '.join(missing)} not: there is no "
                               "rendezvous to meet the other processes at; start them with torchrun "
                               "(torchrun --nproc-per-node N -m hopscotch_core run ..., or --rdzv-endpoint HOST:PORT "
                               "on several machines)")
    import torch
    import torch.distributed as dist

    use_cuda = str(device) in ("auto", "cuda") and torch.cuda.is_available() or str(device).startswith("cuda")
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} "
                                   "GPU(s): start at most one process per GPU (--nproc-per-node)")
        torch.cuda.set_device(local_rank)
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    try:
        if not dist.is_initialized():
            dist.init_process_group(backend, rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=timeout_s))
    except Exception as e:  # noqa: BLE001 - store/connect errors come as RuntimeError, DistStoreError, ValueError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistributedError(f"rank {rank}: could not join the process group at {where} ({first}); check that "
                               "every process got the same rendezvous address and that it is reachable") from None
    return Group(rank, world, local_rank, backend, timeout_s)


def shutdown(group: Group) -> None:
    """Leave the process group (after a last barrier, so no rank leaves while another still needs it)."""
    if group.world == 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        group.barrier()
        dist.destroy_process_group()
