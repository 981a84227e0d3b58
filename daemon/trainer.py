"""Runs a fine-tune job in a child process, so the event
loop never blocks and ingest goes on meanwhile.

The child is a fresh interpreter (multiprocessing "spawn": the daemon's threads, event loop and
sockets are not inherited), dies with the daemon (``PR_SET_PDEATHSIG``), uses ``threads`` torch
threads (one by default: the other core keeps ingesting), and reports through a one-way pipe:
progress dicts as they come, then the result or the error. A timeout kills it. Whatever happens to
the child, the parent gets a ``FineTuneResult`` or a ``TrainingFailed`` saying why, never a hang.

With ``processes`` > 1 the child is torchrun instead (``torch.distributed.run --standalone``),
running ``models/distributed.py`` in that many workers (DDP; gloo on CPU, NCCL on GPUs). The job
and the answers travel through files in a private temporary directory; the contract is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from models.distributed import BACKEND_ENV, BACKENDS
from models.finetune import FineTuneJob, FineTuneResult

from .broker import die_with_parent

__all__ = ["FAILURE_REASONS", "TrainerProcess", "TrainingFailed"]

FAILURE_REASONS = ("diverged", "crashed", "timeout", "error")


class TrainingFailed(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"fine-tune {reason}: {detail}")
        self.reason = reason  # one of FAILURE_REASONS (a metric label)
        self.detail = detail


def _child_main(jobs: Connection, conn: Connection, threads: int) -> None:
    die_with_parent()
    job: FineTuneJob = jobs.recv()
    jobs.close()
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


class _ProgressTail:
    """The complete JSON lines rank 0 has appended to its progress file since the last read."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.partial = path, 0, b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        # torchrun; its workers follow (PR_SET_PDEATHSIG, models/distributed.py)
        os.killpg(process.pid, signal.SIGKILL)


class TrainerProcess:
    """One fine-tune in a child; ``pid`` is set while it runs (the admin status shows it).

    ``processes`` > 1 trains under torchrun with that many workers on ``backend`` ("auto", "gloo",
    "nccl"); ``pid`` is then the launcher's, and killing it takes the workers down too."""

    def __init__(self, threads: int = 1, processes: int = 1, backend: str = "auto") -> None:
        if backend not in BACKENDS:
            raise ValueError(
                f"distributed backend must be one of {', '.join(BACKENDS)}, got {backend!r}"
            )
        self.threads = threads  # torch threads per process (OMP_NUM_THREADS under torchrun)
        self.processes = processes
        self.backend = backend
        self.pid: int | None = None
        self.started_at: float | None = None

    async def run(
        self, job: FineTuneJob, timeout_s: float, on_progress: Callable[[dict[str, Any]], None]
    ) -> FineTuneResult:
        loop = asyncio.get_running_loop()

        def progress(update: dict[str, Any]) -> None:
            # the collectors read progress in a worker thread; the callback belongs to the loop
            loop.call_soon_threadsafe(on_progress, update)

        if self.processes > 1:
            return await self._run_torchrun(job, timeout_s, progress)
        ctx = multiprocessing.get_context("spawn")
        receive, send = ctx.Pipe(duplex=False)
        job_receive, job_send = ctx.Pipe(duplex=False)
        process = ctx.Process(
            target=_child_main,
            args=(job_receive, send, self.threads),
            name="driftd-finetune",
            daemon=True,
        )
        process.start()
        send.close()  # the child holds the only write end now: EOF means it is gone
        job_receive.close()
        self.pid, self.started_at = process.pid, time.time()
        deadline = time.monotonic() + timeout_s
        try:
            # Not as a Process argument: spawn writes those into a pipe from this
            # thread, and the child reads them while it imports the target's module
            # (daemon.trainer, so torch: seconds on a busy machine), so a job
            # bigger than the pipe's buffer would hold the event loop until then.
            sending = loop.run_in_executor(None, self._send_job, job_send, job, process)
            try:
                await asyncio.wait_for(asyncio.shield(sending), timeout_s)
            except TimeoutError:
                process.kill()  # breaks the pipe, so the sending thread returns too
                with contextlib.suppress(TrainingFailed):
                    await sending
                raise TrainingFailed(
                    "timeout",
                    f"the child had not read its job after {timeout_s:.0f}s; it was killed",
                ) from None
            return await loop.run_in_executor(
                None, self._collect, process, receive, deadline, progress, timeout_s
            )
        finally:
            if process.is_alive():
                process.kill()
            await loop.run_in_executor(None, process.join, 5)
            receive.close()
            self.pid = None

    @staticmethod
    def _send_job(job_send: Connection, job: FineTuneJob, process: Any) -> None:
        try:
            job_send.send(job)
        except OSError:  # the child died before it read its job
            process.join(5)
            raise TrainingFailed(
                "crashed", f"the child exited with code {process.exitcode} before reading its job"
            ) from None
        finally:
            job_send.close()

    @staticmethod
    def _collect(
        process: Any,
        receive: Connection,
        deadline: float,
        on_progress: Callable[[dict[str, Any]], None],
        timeout_s: float,
    ) -> FineTuneResult:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                process.kill()
                raise TrainingFailed(
                    "timeout", f"no result after {timeout_s:.0f}s; the child was killed"
                )
            try:
                if not receive.poll(min(remaining, 0.5)):
                    continue
                kind, payload = receive.recv()
            except (EOFError, OSError):
                process.join(5)
                raise TrainingFailed(
                    "crashed",
                    f"the child exited with code {process.exitcode} before reporting a result",
                ) from None
            if kind == "progress":
                on_progress(payload)
            elif kind == "result":
                result: FineTuneResult = payload  # the child sends ("result", FineTuneResult)
                return result
            else:
                reason, detail = payload
                raise TrainingFailed(reason, detail)

    async def _run_torchrun(
        self, job: FineTuneJob, timeout_s: float, progress: Callable[[dict[str, Any]], None]
    ) -> FineTuneResult:
        loop = asyncio.get_running_loop()
        # mode 0700: nobody else can swap the pickles
        workdir = Path(tempfile.mkdtemp(prefix="driftd-ddp-"))
        try:
            (workdir / "job.pkl").write_bytes(pickle.dumps(job))
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={self.processes}",
                "-m",
                "models.distributed",
                str(workdir / "job.pkl"),
                str(workdir / "result.pkl"),
                str(workdir / "progress.jsonl"),
            ]
            env = {
                **os.environ,
                "OMP_NUM_THREADS": str(self.threads),
                BACKEND_ENV: self.backend,
                # the workers import what we import, as spawn's children do
                "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
            }
            with open(workdir / "output.log", "wb") as output:
                process = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    env=env,
                    # SIGTERM: torchrun stops its workers on it
                    start_new_session=True,
                    preexec_fn=die_with_parent,
                )
            self.pid, self.started_at = process.pid, time.time()
            deadline = time.monotonic() + timeout_s
            try:
                return await loop.run_in_executor(
                    None, self._collect_torchrun, process, workdir, deadline, progress, timeout_s
                )
            finally:
                if process.poll() is None:
                    _kill_group(process)
                await loop.run_in_executor(None, process.wait)
                self.pid = None
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    @staticmethod
    def _collect_torchrun(
        process: subprocess.Popen[bytes],
        workdir: Path,
        deadline: float,
        on_progress: Callable[[dict[str, Any]], None],
        timeout_s: float,
    ) -> FineTuneResult:
        progress = _ProgressTail(workdir / "progress.jsonl")
        while process.poll() is None:
            if time.monotonic() >= deadline:
                _kill_group(process)
                raise TrainingFailed(
                    "timeout",
                    f"no result after {timeout_s:.0f}s; torchrun and its workers were killed",
                )
            for update in progress.read():
                on_progress(update)
            time.sleep(0.2)
        for update in progress.read():
            on_progress(update)
        # Rank 0's result if it wrote one; else the first failure written:
        # the cause, where the later ones are other ranks losing their
        # peer (a failing rank may even have been the only one to write).
        records = sorted(workdir.glob("result.pkl*"), key=lambda p: p.stat().st_mtime_ns)
        for kind, payload in sorted(
            (pickle.loads(p.read_bytes()) for p in records), key=lambda r: r[0] != "result"
        ):
            if kind == "result":
                result: FineTuneResult = payload  # rank 0 writes ("result", FineTuneResult)
                return result
            reason, detail = payload
            raise TrainingFailed(reason, detail)
        tail = (workdir / "output.log").read_bytes()[-2000:].decode(errors="replace")
        raise TrainingFailed(
            "crashed",
            f"torchrun exited with code {process.returncode} before reporting a "
            f"result; its output ends:\n{tail}",
        )
