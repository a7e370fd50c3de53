"""Devices: the registry, and each transport against the real thing (onnxruntime, sshd on loopback, adb)."""
from __future__ import annotations

import getpass
import os
import socket
import subprocess
import sys
import time

import pytest

from vitsearch.errors import VitsearchError
from vitsearch.latency import MeasureSettings, Predictor, open_device, parse_perf_test, profile, registry, resolve
from vitsearch.latency.devices import AdbDevice, Artefact, SshDevice
from vitsearch.latency.perftool import perf_test_command, sets_session_config
from vitsearch.latency.registry import folder_name

from .conftest import QUICK, TINY_GRID, TINY_KWARGS, TINY_MODEL, require_binary

# The two output formats of onnxruntime_perf_test -s: the current one (performance_runner.cc prints the run
# summary, then PerformanceResult::DumpToFile the statistics, latencies in seconds), and the older README's.
PERF_TEST_OUTPUT = """\
Session creation time cost: 0.0418832 s
First inference time cost: 31 ms
Total inference time cost: 1.40221 s
Total inference requests: 50
Average inference time cost: 28.0442 ms
Total inference run time: 1.40363 s
Number of inferences per second: 35.6219 
Avg CPU usage: 98 %
Peak working set size: 112463872 bytes
Avg CPU usage:98
Peak working set size:112463872
Runs:50
Min Latency: 0.0267311 s
Max Latency: 0.0312975 s
P50 Latency: 0.0279077 s
P90 Latency: 0.0290115 s
P95 Latency: 0.0296233 s
P99 Latency: 0.0312975 s
P999 Latency: 0.0312975 s
"""
PERF_TEST_OUTPUT_OLD = """\
Total time cost:58.8053
Total iterations:1000
Average time cost:58.8053 ms
Total run time:58.8102 s
Min Latency is 0.0559777sec
Max Latency is 0.0698sec
P50 Latency is 0.0587108sec
P90 Latency is 0.0601sec
P95 Latency is 0.0612sec
P99 Latency is 0.0650sec
P999 Latency is 0.0690sec
"""


def test_perf_test_parser_reads_the_real_format():
    stats = parse_perf_test(PERF_TEST_OUTPUT)
    assert stats["median_ms"] == pytest.approx(27.9077) and stats["p90_ms"] == pytest.approx(29.0115)
    assert stats["min_ms"] == pytest.approx(26.7311) and stats["mean_ms"] == pytest.approx(28.0442)
    assert stats["repeats"] == 50
    old = parse_perf_test(PERF_TEST_OUTPUT_OLD)
    assert old["median_ms"] == pytest.approx(58.7108) and old["repeats"] == 1000 and old["mean_ms"] == 58.8053
    with pytest.raises(VitsearchError, match="could not read onnxruntime_perf_test"):
        parse_perf_test("failed to initialize.\n")


# `onnxruntime_perf_test -h` of an absl-flags build (the flag texts of onnxruntime's command_args_parser.cc,
# shortened), and a usage text in the older getopt style without -C (written for this test).
PERF_TEST_USAGE = """\
onnxruntime_perf_test [options...] model_path [result_file]

Options:
    -C (Specifies session configuration entries as key-value pairs:
     -C "<key1>|<value1> <key2>|<value2>"
    Refer to onnxruntime_session_options_config_keys.h for valid keys and values.
    [Example] -C "session.disable_cpu_ep_fallback|1 ep.context_enable|1"
    ); default: "";
    -x (Sets the number of threads used to parallelize the execution within nodes, A value of 0 means ORT will
      pick a default. Must >=0.); default: 0;
"""
PERF_TEST_USAGE_WITHOUT_C = """\
perf_test [options...] model_path result_file
Options:
\t-x [intra_op_num_threads]: Sets the number of threads used to parallelize the execution within nodes.
\t-y [inter_op_num_threads]: Sets the number of threads used to parallelize the execution of the graph.
\t-h: help
"""


def test_the_perf_tool_is_told_the_threads_and_the_spinning_policy():
    assert sets_session_config(PERF_TEST_USAGE) and not sets_session_config(PERF_TEST_USAGE_WITHOUT_C)
    cmd = perf_test_command("/data/local/tmp/onnxruntime_perf_test", "block-n197.onnx", 4, 50, False)
    assert " -x 4 " in cmd and " -C 'session.intra_op.allow_spinning|0' " in cmd and cmd.endswith(" block-n197.onnx")
    assert " -C 'session.intra_op.allow_spinning|1' " in perf_test_command("p", "m.onnx", 1, 50, True)
    assert "-C" not in perf_test_command("p", "m.onnx", 1, 50, None)  # a tool without -C is run all the same


def test_unknown_device_lists_the_known_ones(tmp_path):
    with pytest.raises(VitsearchError) as e:
        resolve("raspberry", tmp_path)
    assert "unknown device 'raspberry'" in str(e.value)
    for name in ("cpu", "pixel", "torch-cpu", "ssh://user@host[:port]"):
        assert name in str(e.value)


def test_user_file_extends_and_overrides_the_registry(tmp_path):
    (tmp_path / "devices.toml").write_text(
        '[devices.pi]\ntransport = "ssh"\nhost = "pi.local"\nuser = "pi"\n'
        '[devices.cpu]\ndescription = "mine"\nprovider = "cpu"\n')
    known = registry(tmp_path)
    assert known["pi"].transport == "ssh" and known["pi"].get("host") == "pi.local"
    assert known["cpu"].description == "mine" and "pixel" in known
    (tmp_path / "devices.toml").write_text('[devices.bad]\ntransport = "carrier-pigeon"\n')
    with pytest.raises(VitsearchError, match="transport 'carrier-pigeon' is not one of"):
        registry(tmp_path)


def test_ssh_urls_are_devices(tmp_path):
    spec = resolve("ssh://pi@board.local:2222", tmp_path)
    assert (spec.transport, spec.get("user"), spec.get("host"), spec.get("port")) == ("ssh", "pi", "board.local", 2222)
    assert resolve("ssh://board", tmp_path).get("port") == 22
    assert folder_name("ssh://pi@board.local:2222") == "ssh-pi@board.local-2222"
    with pytest.raises(VitsearchError, match="cannot read ssh device"):
        resolve("ssh://pi@@board", tmp_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_ssh_host_fails_clearly_and_fast(tmp_path):
    require_binary("ssh", "openssh-client")
    port = _free_port()  # nothing listens there
    device = SshDevice(resolve(f"ssh://nobody@127.0.0.1:{port}", tmp_path))
    start = time.monotonic()
    with pytest.raises(VitsearchError, match=f"cannot reach ssh device .*port {port}"):
        list(device.measure([Artefact("x", onnx=tmp_path / "x.onnx")], QUICK))
    assert time.monotonic() - start < 15


@pytest.fixture
def sshd(tmp_path):
    """A real OpenSSH server on 127.0.0.1 with a host key and a client key made for this test."""
    sshd_bin = require_binary("/usr/sbin/sshd", "openssh-server")
    require_binary("ssh-keygen", "openssh-client")
    keys = tmp_path / "keys"
    keys.mkdir()
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
    (keys / "authorized_keys").write_text((keys / "client.pub").read_text())
    port = _free_port()
    config = keys / "sshd_config"
    config.write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {keys / 'host'}
AuthorizedKeysFile {keys / 'authorized_keys'}
PidFile {keys / 'sshd.pid'}
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
""")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # privilege separation folder, absent where sshd never ran
    proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                            stderr=open(keys / "sshd.log", "w"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"sshd exited: {(keys / 'sshd.log').read_text()}")
            time.sleep(0.1)
    # The "board": this machine's python with numpy and onnxruntime, reached over ssh like a remote one.
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "devices.toml").write_text(f"""[devices.board]
description = "loopback sshd started by the test"
transport = "ssh"
host = "127.0.0.1"
port = {port}
user = "{getpass.getuser()}"
identity_file = "{keys / 'client'}"
known_hosts = "{keys / 'known_hosts'}"
python = "{sys.executable}"
workdir = "{tmp_path / 'remote'}"
connect_timeout = 5
""")
    yield tmp_path / "tables"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.server
def test_ssh_profile_end_to_end(sshd, tiny_table):
    """Profile over ssh: artefacts and runner copied with scp, run with the board's python, rows streamed back."""
    table = profile("board", model=TINY_MODEL, model_kwargs=TINY_KWARGS, threads=1, tables=sshd,
                    grid_spec=TINY_GRID, settings=QUICK, progress=False)
    assert set(table.rows) == set(tiny_table.rows)
    assert table.meta["device"]["transport"] == "ssh" and table.meta["runtime"]["runtime"] == "onnxruntime"
    assert table.path.parent.name == "board"
    assert Predictor(table).predict("spvit:1=0.5").total_ms > 0
    leftovers = list((sshd.parent / "remote").iterdir())
    assert leftovers == [], "the board's work folder is cleaned up"


@pytest.mark.server
def test_ssh_board_without_onnxruntime_says_what_to_install(sshd, tmp_path):
    spec = resolve("board", sshd)
    spec = type(spec)(spec.name, spec.transport, spec.runtime, spec.description,
                      {**spec.settings, "python": "/bin/false"})
    with pytest.raises(VitsearchError, match="needs python3 with numpy and onnxruntime"):
        SshDevice(spec).check()


@pytest.fixture
def adb():
    path = require_binary("adb", "adb")
    yield path
    subprocess.run([path, "kill-server"], capture_output=True, timeout=30)  # the server our 'adb devices' started


def test_adb_without_a_phone_says_so(adb, tmp_path):
    out = subprocess.run([adb, "devices"], capture_output=True, text=True, timeout=60).stdout
    if len(out.strip().splitlines()) > 1:
        pytest.skip("a device is attached to this machine's adb server")
    device = open_device("pixel", tmp_path)
    assert isinstance(device, AdbDevice)
    with pytest.raises(VitsearchError, match="no Android device attached for 'pixel'.*USB debugging"):
        list(device.measure([Artefact("x", onnx=tmp_path / "x.onnx")], MeasureSettings()))


def test_torch_runtime_measures_modules(tmp_path):
    import torch

    device = open_device("torch-cpu", tmp_path)
    events = list(device.measure([Artefact("lin", module=torch.nn.Linear(8, 8), inputs=(torch.randn(2, 8),))], QUICK))
    assert events[0]["event"] == "runtime" and events[0]["runtime"] == "torch"
    assert events[1]["event"] == "result" and events[1]["median_ms"] > 0


def test_torch_runtime_profiles_a_table(tmp_path):
    table = profile("torch-cpu", model=TINY_MODEL, model_kwargs=TINY_KWARGS, threads=1, tables=tmp_path,
                    grid_spec=TINY_GRID, settings=QUICK, progress=False)
    assert table.meta["runtime"]["runtime"] == "torch" and table.path.parent.name == "torch-cpu"
    assert Predictor(table).predict("evovit:1=0.5").total_ms > 0


@pytest.mark.parametrize("name", ["ssh://-oProxyCommand=reboot@host", "ssh://pi@-oProxyCommand=x",
                                  "ssh://-F@board"])
def test_an_ssh_user_or_host_that_reads_as_an_option_is_refused(tmp_path, name):
    with pytest.raises(VitsearchError, match=r"ssh device .* is not a (user|host) name \(it must not start with '-'\)"):
        resolve(name, tmp_path)
    (tmp_path / "devices.toml").write_text('[devices.pi]\ntransport = "ssh"\nhost = "-oProxyCommand=x"\n')
    with pytest.raises(VitsearchError, match="ssh device 'pi' .*host '-oProxyCommand=x' is not a host name"):
        registry(tmp_path)


def test_ssh_reads_the_destination_after_its_options_end(tmp_path):
    """Even a destination that slipped past the parser is never an option: ssh gets "--" before it."""
    require_binary("ssh", "openssh-client")
    marker = tmp_path / "proxy-command-ran"
    spec = resolve("ssh://pi@board", tmp_path)
    spec = type(spec)(spec.name, "ssh", spec.runtime, spec.description,
                      {**spec.settings, "user": None, "host": f"-oProxyCommand=touch {marker}", "connect_timeout": 2})
    cmd = SshDevice(spec)._ssh("true")
    assert cmd[-3:] == ["--", f"-oProxyCommand=touch {marker}", "true"]
    with pytest.raises(VitsearchError):
        SshDevice(spec).check()
    assert not marker.exists()
