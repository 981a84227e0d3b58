"""The torchrun entry point: one fine-tune job trained data-parallel (DDP), judged by rank 0.

    python -m torch.distributed.run --standalone
    --nproc_per_node=N -m models.distributed JOB RESULT [PROGRESS]

JOB is a pickled ``FineTuneJob``. Every rank joins the process group (backend from ``--backend`` or
``$DRIFTD_DDP_BACKEND``: "gloo", "nccl", or "auto": NCCL when CUDA is there, else gloo), trains with
``train_candidate`` (``train_classifier`` shards the batches and wraps the model in DDP), and rank 0
alone exports, quantises and gates it with ``judge_candidate``: the same steps as in one process.
Rank 0 writes ``("result", FineTuneResult)`` to RESULT; a rank that fails writes
``("failed", (reason, detail))`` to RESULT (rank 0) or RESULT.rank<N>, so the
parent can tell why even when torchrun tore rank 0 down first. Both atomically
(temp file, then rename). Rank 0 appends its progress dicts to PROGRESS as
JSON lines. ``daemon/trainer.py`` launches this and reads the files.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import pickle
import signal
import sys
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

__all__ = ["BACKENDS", "BACKEND_ENV", "main", "rank_record_path", "resolve_backend", "write_record"]

BACKEND_ENV = "DRIFTD_DDP_BACKEND"
BACKENDS = ("auto", "gloo", "nccl")


def resolve_backend(backend: str) -> str:
    import torch
    import torch.distributed as dist

    if backend not in BACKENDS:
        raise ValueError(
            f"distributed backend must be one of {', '.join(BACKENDS)}, got {backend!r}"
        )
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    return backend


def rank_record_path(result_path: str | Path, rank: int) -> Path:
    """Where rank ``rank`` writes its record: RESULT for rank 0, RESULT.rank<N> for the others."""
    return Path(result_path) if rank == 0 else Path(f"{result_path}.rank{rank}")


def write_record(path: Path, record: tuple[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(pickle.dumps(record))
    os.replace(tmp, path)  # a reader sees the whole record or none


def _die_with_launcher() -> None:
    # torchrun starts each worker in a session of its own, so killing the launcher's process group
    # (the trainer's timeout, a SIGKILL) would not reach
    # the workers: the kernel kills them when it dies.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _progress_writer(path: str | None) -> Callable[[dict[str, Any]], None] | None:
    if path is None:
        return None
    # the returned writer appends for the whole run; the file closes as the worker exits
    out = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the writer's lifetime

    def write(update: dict[str, Any]) -> None:
        out.write(json.dumps(update, default=str) + "\n")
        out.flush()

    return write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.distributed", description=__doc__.split("\n")[0]
    )
    parser.add_argument("job")
    parser.add_argument("result")
    parser.add_argument("progress", nargs="?")
    parser.add_argument("--backend", default=os.environ.get(BACKEND_ENV, "auto"), choices=BACKENDS)
    args = parser.parse_args(argv)
    # before the imports below: they take seconds, in which a killed launcher would orphan us
    _die_with_launcher()
    import torch
    import torch.distributed as dist

    from .finetune import judge_candidate, train_candidate
    from .train import TrainingDiverged

    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    try:
        backend = resolve_backend(args.backend)
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        # The trainer's timeout bounds the whole run; this
        # only bounds a collective waiting on a dead peer.
        dist.init_process_group(backend, timeout=timedelta(minutes=5))
        job = pickle.loads(Path(args.job).read_bytes())
        progress = _progress_writer(args.progress) if rank == 0 else None
        trained = train_candidate(job, progress)
        if rank == 0:
            write_record(
                rank_record_path(args.result, 0),
                ("result", judge_candidate(job, trained, progress)),
            )
        return 0
    except BaseException as exc:  # noqa: BLE001 - recorded for the parent, which decides
        # Divergence is decided collectively (train.py), so every rank reports the same one.
        record = (
            "failed",
            ("diverged", str(exc))
            if isinstance(exc, TrainingDiverged)
            else ("error", f"rank {rank}: {exc!r}\n{traceback.format_exc(limit=8)}"),
        )
        write_record(rank_record_path(args.result, rank), record)
        print(f"rank {rank}: {record[1][1]}", file=sys.stderr, flush=True)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
