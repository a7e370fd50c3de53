"""Advice names the user's own values (issue 28, "Messages"): the command to run is printed as it can be run."""
import http.server
import threading

import pytest

from vitsearch.cli import main


def test_predict_without_a_table_names_the_profile_command(tmp_path, capsys):
    tables = tmp_path / "my tables"
    assert main(["predict", "--config", "spvit:3=0.7", "--model", "vitsearch_test_vit", "--batch", "4",
                 "--tables", str(tables)]) == 2
    err = capsys.readouterr().err
    assert f"profile it first with: vitsearch profile --device cpu --model vitsearch_test_vit --batch 4 --tables " \
           f"'{tables}'" in err, err


def test_a_data_set_with_other_classes_names_the_pretrain_command_with_the_users_values(tmp_path, checkpoint, tables,
                                                                                          capsys):
    from PIL import Image

    data = tmp_path / "pets"
    for label in ("cat", "dog", "eel"):
        (data / label).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (40, 40), (40 * i, 80, 120)).save(data / label / f"{i}.png")
    assert main(["search", "--checkpoint", str(checkpoint), "--dataset", str(data), "--tables", str(tables),
                 "--reports", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"vitsearch pretrain --model digits --checkpoint {checkpoint} --dataset {data}" in err, err
    assert "NAME" not in err and "PATH" not in err


class _NotFound(http.server.BaseHTTPRequestHandler):
    """A hub on loopback that has nothing: every file is a 404, answered at once (no download, no retries)."""

    def do_HEAD(self):
        self.send_response(404)
        self.end_headers()

    do_GET = do_HEAD

    def log_message(self, *args):
        pass


@pytest.fixture
def empty_hub(monkeypatch, tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield
    server.shutdown()


def test_pretrained_weights_out_of_reach_hint_at_the_offline_cache(run_cli, empty_hub):
    result = run_cli("info", "--model", "vit_tiny_patch16_224", "--pretrained", timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "HF_HUB_OFFLINE=1" in result.stderr.splitlines()[-1]  # the error says it
    assert "loading timm's pretrained weights for vit_tiny_patch16_224" in result.stderr  # and a line before the wait
