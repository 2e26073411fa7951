"""Validate an untrusted file in a child process with memory, CPU and wall-clock limits.

HDF5 is a large C library; a hostile file may crash it or make it allocate without bound.
The child runs :func:`~.dataset.load_dataset` and reports the outcome as one JSON line, so a
crash or a limit hit costs the child, never the server.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgspec

from tessera_gpu.errors import InvalidDataset, TesseraError
from tessera_gpu.io.safety import Limits

__all__ = ["ChildLimits", "validate_isolated"]


@dataclass(frozen=True)
class ChildLimits:
    """Resource bounds for the validating child.

    ``memory_bytes`` is the address space the parser may add to what the started interpreter
    already maps (so the bound is the same whatever numpy and h5py reserve at import).
    """

    memory_bytes: int = 4 * 2**30
    cpu_seconds: int = 120
    timeout_seconds: float = 180.0


def validate_isolated(
    path: Path, *, limits: Limits | None = None, child: ChildLimits | None = None
) -> dict[str, Any]:
    """Validate ``path`` in a child; return its summary or raise the error it found."""
    child = child or ChildLimits()
    request = json.dumps(
        {"path": str(path), "limits": asdict(limits or Limits()), "child": asdict(child)}
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    try:
        # No preexec_fn: the child bounds itself before it opens the file. A preexec_fn makes
        # Python fork() and run the pthread_atfork handlers, and OpenBLAS's handler tears down
        # its thread pool under a projection that is mid-matmul in another thread: a deadlock.
        proc = subprocess.run(
            [sys.executable, "-m", "tessera_gpu.io.isolation"],
            input=request,
            capture_output=True,
            text=True,
            timeout=child.timeout_seconds,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise InvalidDataset(
            f"Validation timed out after {child.timeout_seconds:g} s", code="parser_timeout"
        ) from None
    return _outcome(proc)


def _mapped_bytes() -> int:
    """This process's address space now (``VmSize``), or 0 where /proc does not say."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _apply_limits(child: ChildLimits) -> None:
    address_space = _mapped_bytes() + child.memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    resource.setrlimit(resource.RLIMIT_CPU, (child.cpu_seconds, child.cpu_seconds + 5))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


_OUT_OF_MEMORY = ("MemoryError", "failed to map segment", "Cannot allocate memory")


def _outcome(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        report = json.loads(lines[-1])
        if report.get("ok"):
            return report["summary"]
        kinds = {cls.status: cls for cls in TesseraError.__subclasses__()}
        raise kinds.get(report["status"], InvalidDataset)(report["error"], code=report["code"])
    if proc.returncode < 0:
        sig = signal.Signals(-proc.returncode)
        if sig in (signal.SIGXCPU, signal.SIGKILL):
            raise InvalidDataset(
                "Validation hit its CPU limit; the file is too costly to parse",
                code="parser_cpu_limit",
            )
        raise InvalidDataset(
            f"The HDF5 parser crashed on this file ({sig.name})", code="parser_crashed"
        )
    if any(sign in proc.stderr for sign in _OUT_OF_MEMORY):
        raise InvalidDataset(
            "Validation hit its memory limit; the file asks for too much memory",
            code="parser_memory_limit",
        )
    raise InvalidDataset(
        f"Validation failed unexpectedly (exit {proc.returncode})", code="parser_failed"
    )


def _child_main() -> None:
    from tessera_gpu import configure_process
    from tessera_gpu.io.dataset import load_dataset

    configure_process()
    request = json.loads(sys.stdin.read())
    _apply_limits(ChildLimits(**request["child"]))  # before the untrusted file is opened
    try:
        ds = load_dataset(Path(request["path"]), limits=Limits(**request["limits"]))
        print(json.dumps({"ok": True, "summary": msgspec.to_builtins(ds.summary())}))
    except TesseraError as exc:
        print(json.dumps({"ok": False, **exc.to_dict()}))
    except MemoryError:
        message = "Validation hit its memory limit; the file asks for too much memory"
        print(json.dumps({"ok": False, "error": message, "code": "parser_memory_limit",
                          "status": InvalidDataset.status}))  # fmt: skip


if __name__ == "__main__":
    _child_main()
