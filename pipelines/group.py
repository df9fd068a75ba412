"""What the ranks of a parallel group say to each other, on torch.distributed.

The group is set up by :func:`join_group` (NCCL for CUDA tensors and gloo for small CPU-side
exchanges on GPUs; gloo alone on the CPU). Rank 0 prepares a batch and :meth:`GroupLink.share`
broadcasts the batch rows (prompt embeddings, latents, reference latents, ids, guidance) and the
schedule; before every step :meth:`GroupLink.agree` broadcasts which requests are still wanted, so
every rank drops the same rows at the same step. Inside the transformer diffusers does its own
collectives (Ulysses all-to-alls, tensor-parallel all-reduces).

Every collective has the group's timeout (``init_process_group(timeout=...)``): a rank that
stops answering without dying makes the others raise instead of waiting for ever. A rank that
dies is noticed sooner, by the driver (:mod:`pipelines.parallel`), which watches the processes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed import TCPStore  # type: ignore[attr-defined]

from pipelines.flux2 import Denoising, Rows

#: The rows rank 0 broadcasts, in this order (the fields of ``Rows`` that are tensors).
ROW_TENSORS = (
    "latents",
    "latent_ids",
    "image_latents",
    "image_ids",
    "prompt_embeds",
    "text_ids",
    "guidance",
)
END = "end"  # the header that ends a run: followers go back to waiting for the driver


@dataclass
class LinkStats:
    """Seconds spent in the group's own broadcasts (not diffusers' collectives), and counts."""

    share_s: float = 0.0
    agree_s: float = 0.0
    shares: int = 0
    agreements: int = 0
    bytes_shared: int = 0
    extra: dict[str, float] = field(default_factory=dict)


def join_group(
    rank: int, world: int, store_port: int, device: torch.device, timeout_s: float
) -> None:
    """Join the group through the driver's TCP store on loopback.

    On CUDA the backend is ``cpu:gloo,cuda:nccl``: CUDA tensors go over NCCL, and the small
    size exchanges diffusers' Ulysses does on CPU tensors over gloo. On the CPU it is
    ``cpu:gloo`` rather than plain ``gloo``: diffusers looks for ``cpu`` in the backend name to
    keep those exchanges on the CPU (``gather_size_by_comm``).
    """
    store = TCPStore("127.0.0.1", store_port, world, is_master=False)
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "cpu:gloo"
    dist.init_process_group(
        backend,
        store=store,
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=timeout_s),
        device_id=device if device.type == "cuda" else None,
    )


def adapt_diffusers_to_cpu() -> None:
    """CPU only: let diffusers 0.42.1's parallelism run on a gloo mesh of CPU processes.

    The one place the CPU path differs from CUDA (used by the tests, the CPU benchmark and
    ``FLUX2_DEVICE=cpu``; on CUDA nothing here runs). diffusers assumes an accelerator in three
    spots:

    1. ``ModelMixin._resolve_parallel_config`` takes the rank's device as
       ``rank % torch.accelerator.device_count()``, which divides by zero without one: report one
       device, so every rank resolves to ``cpu:0``.
    2. ``hooks.tensor_parallel._SUPPORTED_TP_DEVICES`` is an allow-list without ``cpu``; the
       tensor-parallel hooks themselves are device-agnostic DTensor code.
    3. ``hooks.context_parallel._all_gather_anything`` (Ulysses over a token count the degree
       does not divide) gathers slices of different lengths with ``dist.all_gather``, which NCCL
       accepts and gloo refuses: pad every slice to the longest, gather, cut the padding off.
    """
    import diffusers.hooks.context_parallel as context_parallel
    import diffusers.hooks.tensor_parallel as tensor_parallel
    from diffusers.models._modeling_parallel import gather_size_by_comm

    torch.accelerator.device_count = lambda: 1  # type: ignore[assignment,unused-ignore]
    if "cpu" not in tensor_parallel._SUPPORTED_TP_DEVICES:
        tensor_parallel._SUPPORTED_TP_DEVICES = (*tensor_parallel._SUPPORTED_TP_DEVICES, "cpu")

    def all_gather_padded(tensor: torch.Tensor, dim: int, group: Any) -> torch.Tensor:
        tensor = tensor.contiguous()
        sizes = gather_size_by_comm(tensor.shape[dim], group)
        pad = list(tensor.shape)
        pad[dim] = max(sizes) - tensor.shape[dim]
        padded = torch.cat([tensor, tensor.new_zeros(pad)], dim=dim)
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded, group=group)
        return torch.cat(
            [part.narrow(dim, 0, n) for part, n in zip(parts, sizes, strict=True)], dim
        )

    context_parallel._all_gather_anything = all_gather_padded


class GroupLink:
    """Rank 0's batch and per-step decisions, broadcast to every rank of the group."""

    def __init__(self, rank: int, device: torch.device) -> None:
        self.rank = rank
        self.device = device
        self.stats = LinkStats()

    @property
    def leads(self) -> bool:
        return self.rank == 0

    def share(self, work: Denoising | None | str) -> Denoising | None | str:
        """Rank 0: broadcast ``work`` (a batch, ``None`` for "nothing to run", or :data:`END`).
        Other ranks: pass anything; get what rank 0 sent, the batch rebuilt on this device.
        """
        started = time.perf_counter()
        header: list[Any] = [_header(work) if self.leads else None]
        dist.broadcast_object_list(header, src=0, device=self._object_device)
        meta = header[0]
        if meta is None or meta == END:
            self.stats.share_s += time.perf_counter() - started
            return meta  # type: ignore[no-any-return]
        tensors = {}
        for name, (shape, dtype) in meta["tensors"].items():
            if self.leads:
                assert isinstance(work, Denoising)
                tensor = getattr(work.rows, name).contiguous()
            else:
                tensor = torch.empty(shape, dtype=getattr(torch, dtype), device=self.device)
            dist.broadcast(tensor, src=0)
            tensors[name] = tensor
            self.stats.bytes_shared += tensor.numel() * tensor.element_size()
        self.stats.shares += 1
        self.stats.share_s += time.perf_counter() - started
        if self.leads:
            return work
        rows = Rows(owners=list(meta["owners"]), **tensors)
        return Denoising(meta["requests"], rows, meta["steps"], meta["sigmas"], meta["mu"])

    def agree(self, requests: int, alive: set[int]) -> set[int]:
        """Rank 0: broadcast ``alive`` (the requests still wanted); every rank returns it."""
        started = time.perf_counter()
        mask = torch.zeros(requests, dtype=torch.uint8, device=self.device)
        if self.leads:
            mask[sorted(alive)] = 1
        dist.broadcast(mask, src=0)
        agreed = {i for i, keep in enumerate(mask.tolist()) if keep}
        self.stats.agreements += 1
        self.stats.agree_s += time.perf_counter() - started
        return agreed

    @property
    def _object_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def _header(work: Denoising | None | str) -> dict[str, Any] | None | str:
    if work is None or isinstance(work, str):
        return work
    rows = work.rows
    return {
        "requests": work.requests,
        "owners": list(rows.owners),
        "steps": work.steps,
        "sigmas": [float(s) for s in work.sigmas],
        "mu": work.mu,
        "tensors": {
            name: (tuple(getattr(rows, name).shape), str(getattr(rows, name).dtype).split(".")[1])
            for name in ROW_TENSORS
        },
    }


__all__ = ["END", "ROW_TENSORS", "GroupLink", "LinkStats", "adapt_diffusers_to_cpu", "join_group"]
