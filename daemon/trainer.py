"""Runs a fine-tune job in a child process, so the event loop never blocks and ingest goes on meanwhile.

The child is a fresh interpreter (multiprocessing "spawn": the daemon's threads, event loop and
sockets are not inherited), dies with the daemon (``PR_SET_PDEATHSIG``), uses ``threads`` torch
threads (one by default: the other core keeps ingesting), and reports through a one-way pipe:
progress dicts as they come, then the result or the error. A timeout kills it. Whatever happens to
the child, the parent gets a ``FineTuneResult`` or a ``TrainingFailed`` saying why, never a hang.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from models.finetune import FineTuneJob, FineTuneResult

__all__ = ["FAILURE_REASONS", "TrainerProcess", "TrainingFailed"]

FAILURE_REASONS = ("diverged", "crashed", "timeout", "error")


class TrainingFailed(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"fine-tune {reason}: {detail}")
        self.reason = reason  # one of FAILURE_REASONS (a metric label)
        self.detail = detail


def _child_main(job: FineTuneJob, conn: Connection, threads: int) -> None:
    from .broker import die_with_parent

    die_with_parent()
    import torch

    from models.train import TrainingDiverged

    torch.set_num_threads(threads)
    try:
        from models.finetune import run_fine_tune

        result = run_fine_tune(job, progress=lambda p: conn.send(("progress", p)))
        conn.send(("result", result))
    except TrainingDiverged as exc:
        conn.send(("failed", ("diverged", str(exc))))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which decides
        conn.send(("failed", ("error", f"{exc!r}\n{traceback.format_exc(limit=8)}")))
    finally:
        conn.close()


class TrainerProcess:
    """One fine-tune in a child; ``pid`` is set while it runs (the admin status shows it)."""

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads
        self.pid: int | None = None
        self.started_at: float | None = None

    async def run(self, job: FineTuneJob, timeout_s: float, on_progress: Callable[[dict[str, Any]], None]) -> FineTuneResult:
        loop = asyncio.get_running_loop()
        ctx = multiprocessing.get_context("spawn")
        receive, send = ctx.Pipe(duplex=False)
        process = ctx.Process(target=_child_main, args=(job, send, self.threads), name="driftd-finetune", daemon=True)
        process.start()
        send.close()  # the child holds the only write end now: EOF means it is gone
        self.pid, self.started_at = process.pid, time.time()
        deadline = time.monotonic() + timeout_s

        def progress_threadsafe(update: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(on_progress, update)

        try:
            return await loop.run_in_executor(None, self._collect, process, receive, deadline, progress_threadsafe, timeout_s)
        finally:
            if process.is_alive():
                process.kill()
            await loop.run_in_executor(None, process.join, 5)
            receive.close()
            self.pid = None

    @staticmethod
    def _collect(process: Any, receive: Connection, deadline: float, on_progress: Callable[[dict[str, Any]], None], timeout_s: float) -> FineTuneResult:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                process.kill()
                raise TrainingFailed("timeout", f"no result after {timeout_s:.0f}s; the child was killed")
            try:
                if not receive.poll(min(remaining, 0.5)):
                    continue
                kind, payload = receive.recv()
            except (EOFError, OSError):
                process.join(5)
                raise TrainingFailed("crashed", f"the child exited with code {process.exitcode} before reporting a result") from None
            if kind == "progress":
                on_progress(payload)
            elif kind == "result":
                return payload
            else:
                reason, detail = payload
                raise TrainingFailed(reason, detail)
