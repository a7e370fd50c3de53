"""The embedded default: the digits base model, trained once, cached, reused, at least 95% held out."""
import json

from vitsearch.data import load_dataset
from vitsearch.pretrain import base_model
from vitsearch.training import accuracy


def test_digits_base_model_reaches_95_percent_held_out(digits_base):
    model, meta = digits_base
    assert meta["val_accuracy"] >= 0.95
    # The cached weights really give that accuracy on the held-out split, not just a number in a file.
    assert accuracy(model, load_dataset("digits", model)) == meta["val_accuracy"]


def test_second_use_loads_the_cache(digits_base):
    model, meta = base_model()
    assert meta["cached"] and meta["path"] == digits_base[1]["path"]
    saved = json.loads((__import__("pathlib").Path(meta["path"]) / "meta.json").read_text())
    assert saved["settings_key"] == meta["settings_key"] and "versions" in saved
