"""The device registry: names resolved to a transport (local, ssh, adb) and a runtime.

The built-in ``vitsearch/devices.toml``, extended (and overridden by name) by ``devices.toml`` in the tables
folder (``latency_tables/devices.toml`` by default): a project's device list travels with the tables measured on
those devices. ``ssh://user@host[:port]`` is accepted as a device name without an entry. The backends that
measure on a resolved device are in :mod:`.devices`.

Setting up the transports:

- ssh board (Raspberry Pi, Jetson): key-based login must work without a prompt (``ssh-copy-id user@board``),
  and the board needs ``python3 -m pip install onnxruntime numpy``. For options, add an entry::

      [devices.pi]
      transport = "ssh"
      host = "raspberrypi.local"
      user = "pi"
      python = "/home/pi/venv/bin/python"   # default: python3

- Android phone (``pixel``): onnxruntime publishes no ``onnxruntime_perf_test`` binary; build it from the
  onnxruntime sources with the Android NDK (``./build.sh --android --android_sdk_path SDK --android_ndk_path
  NDK --android_abi arm64-v8a --android_api 27 --config Release``; onnxruntime 1.21 is known to work on
  phones), then ``adb push onnxruntime_perf_test /data/local/tmp/`` (plus ``libonnxruntime.so`` for a shared
  build) and ``adb shell chmod +x /data/local/tmp/onnxruntime_perf_test``. Change ``perf_test``,
  ``ld_library_path`` or ``serial`` in a ``[devices.pixel]`` entry of your devices.toml if they differ.
  The tool is run with the table's threads (``-x``; 0: the phone's ``nproc``) and the runner's spinning policy
  (``-C "session.intra_op.allow_spinning|0"``); an older build without ``-C`` is measured anyway, and the
  table's ``spinning`` says the policy was not set.
"""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from ..errors import VitsearchError

USER_FILE = "devices.toml"
TRANSPORTS = ("local", "ssh", "adb")
RUNTIMES = ("onnxruntime", "torch", "onnxruntime_perf_test")
_SSH_URL = re.compile(r"ssh://(?:(?P<user>[^@/:\s]+)@)?(?P<host>[^@/:\s]+)(?::(?P<port>\d+))?/?")


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    transport: str
    runtime: str
    description: str = ""
    settings: Mapping[str, Any] = field(default_factory=dict)  # transport/runtime specific keys

    def get(self, key: str, default: Any = None) -> Any:
        return self.settings.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "transport": self.transport, "runtime": self.runtime,
                "description": self.description, **dict(self.settings)}


def _read_toml(text: str, source: str) -> dict[str, dict[str, Any]]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise VitsearchError(f"device file {source} is not valid TOML: {e}") from e
    devices = data.get("devices", {})
    if not isinstance(devices, dict) or not all(isinstance(v, dict) for v in devices.values()):
        raise VitsearchError(f"device file {source} must hold [devices.NAME] tables")
    return devices


def registry(tables: str | os.PathLike[str] = "latency_tables") -> dict[str, DeviceSpec]:
    """Every named device: the built-in ones, then the user file ``<tables>/devices.toml`` (overrides by name)."""
    entries = _read_toml(resources.files("vitsearch").joinpath("devices.toml").read_text(), "vitsearch/devices.toml")
    user = Path(tables) / USER_FILE
    if user.is_file():
        entries = {**entries, **_read_toml(user.read_text(), str(user))}
    return {name: _spec(name, entry, str(user) if user.is_file() else "built-in") for name, entry in entries.items()}


def _spec(name: str, entry: Mapping[str, Any], source: str) -> DeviceSpec:
    entry = dict(entry)
    transport, runtime = entry.pop("transport", "local"), entry.pop("runtime", "onnxruntime")
    if transport not in TRANSPORTS:
        raise VitsearchError(f"device {name!r} ({source}): transport {transport!r} is not one of {', '.join(TRANSPORTS)}")
    if runtime not in RUNTIMES:
        raise VitsearchError(f"device {name!r} ({source}): runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    if (runtime == "onnxruntime_perf_test") != (transport == "adb"):
        raise VitsearchError(f"device {name!r} ({source}): adb devices use runtime 'onnxruntime_perf_test', "
                             "and only they do")
    if runtime == "torch" and transport != "local":
        raise VitsearchError(f"device {name!r} ({source}): the torch runtime runs only on the local transport")
    if transport == "ssh":
        for key in ("host", "user"):
            _check_ssh_name(name, key, entry.get(key), source)
    return DeviceSpec(name, transport, runtime, str(entry.pop("description", "")), entry)


def _check_ssh_name(device: str, key: str, value: Any, source: str) -> None:
    """A user or host that ssh would read as an option (``-oProxyCommand=...``) runs commands here: refused."""
    if value and (not isinstance(value, str) or value.startswith("-")):
        raise VitsearchError(f"ssh device {device!r} ({source}): {key} {value!r} is not a {key} name (it must not "
                             "start with '-'): give the board's real user and host")


def resolve(name: str, tables: str | os.PathLike[str] = "latency_tables") -> DeviceSpec:
    """The spec for a device name or an ``ssh://user@host[:port]`` URL."""
    known = registry(tables)
    if name in known:
        return known[name]
    if name.startswith("ssh://"):
        m = _SSH_URL.fullmatch(name)
        if not m:
            raise VitsearchError(f"cannot read ssh device {name!r}: write ssh://user@host or ssh://user@host:port")
        settings = {"host": m["host"], "port": int(m["port"] or 22)}
        if m["user"]:
            settings["user"] = m["user"]
        for key, value in settings.items():
            _check_ssh_name(name, key, value if key != "port" else None, "device name")
        return DeviceSpec(name, "ssh", "onnxruntime", f"ssh board {m['host']}", settings)
    raise VitsearchError(
        f"unknown device {name!r}: known devices are {', '.join(sorted(known))}, or ssh://user@host[:port]. "
        f"Add your own in {Path(tables) / USER_FILE}")


def folder_name(name: str) -> str:
    """A device name as a folder name: ``ssh://pi@board:2222`` -> ``ssh-pi@board-2222``."""
    return re.sub(r"[^A-Za-z0-9._@+-]+", "-", name.replace("ssh://", "ssh-")).strip("-") or "device"
