"""Devices: the backends that measure artefacts on a device the registry (:mod:`.registry`) resolved.

The contract every backend keeps (:class:`Device`): given artefacts (static-shape ONNX graphs, or torch modules
for the torch runtime) and measurement settings, **prepare** them on the device (copy, push), **run** them, and
**yield latency statistics** one artefact at a time as they are measured, as the runner's event dicts
(:mod:`vitsearch.latency.runner`): one ``runtime`` event (provenance: runtime, version, host) first, then one
``result`` or ``error`` per artefact. Local, ssh and adb differ only in transport; the onnxruntime ones all run
the same ``runner.py``. Transport failures raise :class:`VitsearchError` with what to do.
Setting up each transport (ssh keys, the Android binary) is described in :mod:`.registry`.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import RunFailure, VitsearchError
from .perftool import SPINNING_UNSET, parse_perf_test, perf_test_command, sets_session_config
from .registry import DeviceSpec, resolve

logger = logging.getLogger(__name__)

RUNNER = Path(__file__).with_name("runner.py")


@dataclass(frozen=True)
class MeasureSettings:
    """How each artefact is timed (the runner's manifest keys)."""

    threads: int = 0  # intra-op threads; 0 = every core of the device (the runtime event says how many)
    spinning: bool = False  # idle intra-op workers spin between calls; off so none competes with a timed graph
    warmup: int = 5  # calls thrown away first (allocations, caches, thread pool start)
    min_repeats: int = 10  # calls per round; rounds repeat until the median is stable
    max_repeats: int = 300
    max_seconds: float = 3.0  # per artefact, warm-up included
    rel_tol: float = 0.01  # stable: the median moved by less than this between two rounds
    passes: int = 3  # interleaved passes over the artefacts of one call, samples pooled (see runner.py)


@dataclass
class Artefact:
    """One thing to time: a static-shape ONNX graph (``onnx``, with any ``files`` it needs beside it, such as
    external weights), or for the torch runtime a module and its inputs."""

    name: str
    onnx: Path | None = None
    files: tuple[Path, ...] = ()
    module: Any = None
    inputs: tuple[Any, ...] = ()


class Device(ABC):
    """A backend. ``needs`` says which artefacts it takes: ``"onnx"`` or ``"torch"``."""

    needs = "onnx"

    def __init__(self, spec: DeviceSpec) -> None:
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name

    @abstractmethod
    def measure(self, artefacts: Sequence[Artefact], settings: MeasureSettings) -> Iterator[dict[str, Any]]:
        """Prepare, run and yield the runner's events (``runtime`` first, then ``result``/``error`` per artefact)."""




def open_device(spec: DeviceSpec | str, tables: str | os.PathLike[str] = "latency_tables") -> Device:
    if isinstance(spec, str):
        spec = resolve(spec, tables)
    if spec.runtime == "torch":
        return TorchDevice(spec)
    return {"local": LocalDevice, "ssh": SshDevice, "adb": AdbDevice}[spec.transport](spec)


# Local and ssh: the runner over a transport -------------------------------------------------------------------

def _manifest(artefacts: Sequence[Artefact], settings: MeasureSettings, provider: str, *,
              absolute: bool = False) -> dict[str, Any]:
    """The runner's manifest; paths are the files' names (copied beside it), or ``absolute`` on this machine."""
    for a in artefacts:
        if a.onnx is None:
            raise ValueError(f"artefact {a.name} has no ONNX graph")
    return {**asdict(settings), "provider": provider,
            "models": [{"name": a.name, "path": str(a.onnx.resolve()) if absolute else a.onnx.name}
                       for a in artefacts]}


def _stream(cmd: list[str], what: str, timeout: float | None, hint: str = "") -> Iterator[dict[str, Any]]:
    """Run ``cmd`` and yield the JSON lines it prints, as it prints them."""
    logger.debug("running %s", shlex.join(cmd))
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL)
    except FileNotFoundError as e:
        raise VitsearchError(f"cannot run {cmd[0]!r} for {what}: {e}") from e
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.strip()
            if line.startswith("{"):
                yield json.loads(line)
            elif line:
                logger.debug("%s: %s", what, line)
        err = proc.stderr.read() if proc.stderr else ""
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if rc not in (0, 1):  # 1: some artefacts failed, reported as error events
        last = err.strip().splitlines()[-1] if err.strip() else f"exit status {rc}"
        raise RunFailure(f"{what} failed: {last}{hint}")


class LocalDevice(Device):
    """onnxruntime on this machine: the runner in a child process, so its threads compete with nothing of ours."""

    def measure(self, artefacts: Sequence[Artefact], settings: MeasureSettings) -> Iterator[dict[str, Any]]:
        if not artefacts:
            return
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(_manifest(artefacts, settings, self.spec.get("provider", "cpu"), absolute=True), f,
                      allow_nan=False)
        try:
            yield from _stream([sys.executable, str(RUNNER), f.name], f"the runner on {self.name}", None)
        finally:
            os.unlink(f.name)


class SshDevice(Device):
    """A Linux board over ssh: artefacts and ``runner.py`` are copied (a tar stream over ssh) and run with the
    board's python.

    Settings: ``host``, ``user``, ``port`` (22), ``python`` ("python3"), ``workdir`` ("/tmp/vitsearch"),
    ``identity_file``, ``known_hosts`` (a file for the host key, accepted on first use), ``ssh_options`` (list of
    extra ``-o`` values), ``connect_timeout`` (10 s), ``provider`` ("cpu" or "cuda" on a Jetson).
    Authentication is by key only (BatchMode): no password prompt can hang a profile.
    """

    def _target(self) -> str:
        host = self.spec.get("host")
        if not host:
            raise VitsearchError(f"ssh device {self.name!r} has no host: set host = \"board.local\" in devices.toml")
        user = self.spec.get("user")
        return f"{user}@{host}" if user else host

    def _options(self) -> list[str]:
        opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(self.spec.get('connect_timeout', 10))}",
                "-o", "StrictHostKeyChecking=accept-new", "-o", "LogLevel=ERROR"]
        if self.spec.get("known_hosts"):
            opts += ["-o", f"UserKnownHostsFile={Path(self.spec.get('known_hosts')).expanduser()}"]
        if self.spec.get("identity_file"):
            opts += ["-i", str(Path(self.spec.get("identity_file")).expanduser()), "-o", "IdentitiesOnly=yes"]
        for o in self.spec.get("ssh_options", []):
            opts += ["-o", str(o)]
        return opts

    def _ssh(self, command: str) -> list[str]:
        # "--" ends ssh's options: whatever the destination says, ssh reads it as a destination
        return ["ssh", "-p", str(self.spec.get("port", 22)), *self._options(), "--", self._target(), command]

    def _run(self, command: str, what: str) -> str:
        timeout = 2 * int(self.spec.get("connect_timeout", 10)) + 30
        try:
            done = subprocess.run(self._ssh(command), capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise RunFailure(f"ssh device {self.name!r}: {what} did not finish within {timeout} s") from e
        except FileNotFoundError as e:
            raise RunFailure("the ssh client is not installed: apt-get install openssh-client") from e
        if done.returncode == 255:
            msg = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "connection failed"
            raise RunFailure(
                f"cannot reach ssh device {self.name!r} ({self._target()} port {self.spec.get('port', 22)}): {msg}. "
                "Check the host, the port and that your key is in the board's authorized_keys")
        if done.returncode != 0:
            raise RunFailure(f"ssh device {self.name!r}: {what} failed: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def check(self) -> str:
        """Reachable, with python3, numpy and onnxruntime? Returns the board's onnxruntime version."""
        python = self.spec.get("python", "python3")
        probe = f"{shlex.quote(python)} -c 'import numpy, onnxruntime; print(onnxruntime.__version__)'"
        try:
            return self._run(probe, "the python/onnxruntime check").strip()
        except VitsearchError as e:
            if "cannot reach" in str(e):
                raise
            raise RunFailure(f"{e}. The board needs python3 with numpy and onnxruntime "
                                 f"(pip install onnxruntime), or set python = \"/path/to/python\" for "
                                 f"{self.name!r} in devices.toml") from e

    def _copy(self, files: Sequence[Path], workdir: str) -> None:
        """Stream the files as one tar archive into ``tar -x`` on the board: one connection, and nothing needed
        there but tar (scp needs an sftp subsystem, which minimal boards and test servers may lack)."""
        remote = shlex.quote(workdir)
        cmd = self._ssh(f"mkdir -p {remote} && tar -C {remote} -xf -")
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            with tarfile.open(fileobj=proc.stdin, mode="w|") as tar:
                for f in files:
                    tar.add(str(f), arcname=Path(f).name)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the error is on stderr, read below
        err = proc.stderr.read().decode(errors="replace").strip()
        if proc.wait() != 0:
            raise RunFailure(f"copying artefacts to ssh device {self.name!r} failed: {err or 'tar failed'}")

    def measure(self, artefacts: Sequence[Artefact], settings: MeasureSettings) -> Iterator[dict[str, Any]]:
        if not artefacts:
            return
        self.check()
        workdir = self.spec.get("workdir", "/tmp/vitsearch")
        python = self.spec.get("python", "python3")
        with tempfile.TemporaryDirectory(prefix="vitsearch-ssh-") as tmp:
            manifest = Path(tmp) / "manifest.json"
            manifest.write_text(json.dumps(_manifest(artefacts, settings, self.spec.get("provider", "cpu")),
                                           allow_nan=False))
            files = {RUNNER, manifest}
            for a in artefacts:
                files |= {a.onnx, *a.files}
            self._copy(sorted(files), workdir)
            remote = shlex.quote(workdir)
            cmd = self._ssh(f"cd {remote} && {shlex.quote(python)} runner.py manifest.json")
            try:
                yield from _stream(cmd, f"the runner on ssh device {self.name!r}", None)
            finally:
                names = " ".join(shlex.quote(Path(f).name) for f in files)
                try:
                    self._run(f"cd {remote} && rm -f {names}", "cleaning up")
                except VitsearchError as e:
                    logger.warning("%s", e)


# adb: onnxruntime_perf_test on an Android phone ----------------------------------------------------------------

class AdbDevice(Device):
    """An Android phone over adb, timed with ``onnxruntime_perf_test`` at a configured path on the phone.

    Settings: ``serial`` (empty: the one attached phone), ``perf_test``, ``ld_library_path``, ``workdir``,
    ``repeats`` (perf_test runs a fixed count after its one warm-up run), ``adb`` (the client, default "adb").
    """

    def _adb(self, *args: str, serial: str | None = None) -> list[str]:
        cmd = [self.spec.get("adb", "adb")]
        if serial:
            cmd += ["-s", serial]
        return cmd + list(args)

    def _call(self, cmd: list[str], what: str, timeout: float = 120) -> str:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except FileNotFoundError as e:
            raise RunFailure("the adb client is not installed: apt-get install adb (or set adb = "
                                 f"\"/path/to/adb\" for {self.name!r} in devices.toml)") from e
        except subprocess.TimeoutExpired as e:
            raise RunFailure(f"adb device {self.name!r}: {what} did not finish within {timeout} s") from e
        if done.returncode != 0:
            raise RunFailure(f"adb device {self.name!r}: {what} failed: {(done.stderr or done.stdout).strip()}")
        return done.stdout

    def serial(self) -> str:
        """The serial to talk to; raises when no phone (or not the configured one) is attached and ready."""
        out = self._call(self._adb("devices"), "listing attached devices")
        states = dict(line.split()[:2] for line in out.splitlines()[1:] if len(line.split()) >= 2)
        wanted = self.spec.get("serial") or ""
        if not states:
            raise RunFailure(
                f"no Android device attached for {self.name!r}: 'adb devices' lists none. Connect the phone by USB "
                "with USB debugging on (or 'adb connect HOST:PORT') and accept the authorisation prompt")
        if wanted and wanted not in states:
            raise VitsearchError(f"Android device {wanted!r} for {self.name!r} is not attached: "
                                 f"attached are {', '.join(f'{s} ({st})' for s, st in states.items())}")
        if not wanted:
            if len(states) > 1:
                raise VitsearchError(f"several Android devices attached ({', '.join(states)}): set serial for "
                                     f"{self.name!r} in devices.toml")
            wanted = next(iter(states))
        if states[wanted] != "device":
            raise VitsearchError(f"Android device {wanted!r} is {states[wanted]!r}, not ready: accept the USB "
                                 "debugging prompt on the phone (unauthorized) or reconnect it (offline)")
        return wanted

    def measure(self, artefacts: Sequence[Artefact], settings: MeasureSettings) -> Iterator[dict[str, Any]]:
        from .runner import threads_for

        if not artefacts:
            return
        serial = self.serial()
        perf, workdir = self.spec.get("perf_test"), self.spec.get("workdir", "/data/local/tmp/vitsearch")
        shell = lambda command, what: self._call(self._adb("shell", command, serial=serial), what)  # noqa: E731
        try:
            digest = shell(f"sha256sum {shlex.quote(perf)}", "hashing the perf-test binary").split()[0]
        except VitsearchError as e:
            raise VitsearchError(f"{e}. Build onnxruntime_perf_test for Android and push it to {perf} (see docs/devices-and-threads.md)")
        props = {p: shell(f"getprop {p}", "reading the phone's properties").strip()
                 for p in ("ro.product.model", "ro.board.platform", "ro.build.version.release")}
        env = f"LD_LIBRARY_PATH={shlex.quote(self.spec.get('ld_library_path'))} " if self.spec.get("ld_library_path") else ""
        cpus = int(shell("nproc 2>/dev/null || grep -c ^processor /proc/cpuinfo",
                         "counting the phone's cores").split()[0])
        try:
            threads = threads_for(settings.threads, cpus, f"{self.name!r} ({props['ro.product.model']})")
        except ValueError as e:
            raise VitsearchError(str(e)) from None
        usage = shell(f"{env}{shlex.quote(perf)} -h 2>&1; true", "reading the perf tool's options")
        settable = sets_session_config(usage)
        if not settable:
            logger.warning("%s's onnxruntime_perf_test has no -C option: its intra-op threads spin as the tool's "
                           "build decides, and the table says so", self.name)
        yield {"event": "runtime", "runtime": "onnxruntime_perf_test", "version": f"sha256:{digest}",
               "provider": "cpu", "threads": threads, "cpus": cpus,
               "spinning": ("on" if settings.spinning else "off") if settable else SPINNING_UNSET,
               "host": props["ro.product.model"], "serial": serial, **props}
        shell(f"mkdir -p {shlex.quote(workdir)}", "creating the work folder")
        files = sorted({str(f) for a in artefacts for f in (a.onnx, *a.files)})
        self._call(self._adb("push", *files, workdir + "/", serial=serial), "pushing the artefacts", timeout=1800)
        repeats = int(self.spec.get("repeats", 50))
        try:
            for a in artefacts:
                cmd = f"cd {shlex.quote(workdir)} && {env}" + perf_test_command(
                    perf, a.onnx.name, threads, repeats, settings.spinning if settable else None)
                try:
                    yield {"event": "result", "name": a.name, **parse_perf_test(shell(cmd, f"timing {a.name}"))}
                except VitsearchError as e:
                    yield {"event": "error", "name": a.name, "message": str(e)}
        finally:
            names = " ".join(shlex.quote(Path(f).name) for f in files)
            shell(f"cd {shlex.quote(workdir)} && rm -f {names}", "cleaning up")


# torch: PyTorch eager in this process ----------------------------------------------------------------------------

class TorchDevice(Device):
    """PyTorch eager on this machine's CPU or GPU (``torch_device``), timed with the runner's stopping rule."""

    needs = "torch"

    def measure(self, artefacts: Sequence[Artefact], settings: MeasureSettings) -> Iterator[dict[str, Any]]:
        import torch

        from . import runner

        device = torch.device(self.spec.get("torch_device", "cpu"))
        if device.type == "cuda" and not torch.cuda.is_available():
            raise VitsearchError(f"device {self.name!r} needs CUDA, but torch sees no GPU here")
        try:
            threads = runner.threads_for(settings.threads, runner.cpu_count(), os.uname().nodename)
        except ValueError as e:
            raise VitsearchError(str(e)) from None
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        try:
            yield {"event": "runtime", "runtime": "torch", "version": torch.__version__, "provider": device.type,
                   "threads": threads, "cpus": runner.cpu_count(),
                   "spinning": "not set: torch's OpenMP threads wait as OMP_WAIT_POLICY says",
                   "host": os.uname().nodename,
                   "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
            def make_call(a: Artefact) -> Any:
                module = a.module.to(device).eval()
                inputs = tuple(t.to(device) for t in a.inputs)

                def call() -> None:
                    module(*inputs)
                    sync()

                return call

            with torch.inference_mode():
                yield from runner.time_interleaved([(a.name, a) for a in artefacts], make_call, asdict(settings))
        finally:
            torch.set_num_threads(previous)

