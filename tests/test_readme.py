"""The README and the manual under docs/ say what the code does, and say it runnably.

Every ```python block of the README, and of each docs/ page, is executed in order, in one namespace per file, in a
folder that holds a real (coarse) CPU latency table under ``latency_tables/``, as after ``vitsearch profile``. A
block whose first line says ``# README test: skip (why)`` is left out; the reason is part of the page. Every
``vitsearch`` command line of a ```bash block parses with the CLI's own parser, the fresh-machine commands are the
ones CI runs, and every link resolves: a figure the README or docs quote links to its row of the claims table in
benchmarks/RESULTS.md, and every row there is quoted somewhere."""
from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
HISTORY = ROOT / "benchmarks" / "HISTORY.md"
SKIP = "# README test: skip"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


def test_the_readme_has_library_examples_and_says_why_one_is_not_run():
    blocks = python_blocks(README.read_text())
    skipped = [b for b in blocks if b.startswith(SKIP)]
    assert len(blocks) >= 3 and len(skipped) <= 1
    assert all(re.match(rf"{re.escape(SKIP)} \(.+\)", b) for b in skipped)  # a reason, in brackets


def run_python_blocks(page: Path, tables: Path, folder: Path, monkeypatch, namespace: dict | None = None) -> int:
    """Run ``page``'s Python blocks as written, in one namespace, in ``folder`` with a latency table and a photo
    (``photo.jpg``, of another size and shape than any model's input, as a photo is): how many ran."""
    import numpy as np
    from PIL import Image

    shutil.copytree(tables, folder / "latency_tables")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)).save(folder / "photo.jpg")
    monkeypatch.chdir(folder)
    namespace = {"__name__": "__readme__"} if namespace is None else namespace
    ran = 0
    for block in python_blocks(page.read_text()):
        if block.startswith(SKIP):
            continue
        exec(compile(block, f"{page}:block{ran}", "exec"), namespace)  # noqa: S102 - the page is ours
        ran += 1
    return ran


def test_the_readme_python_blocks_run_as_written(tables, tmp_path, monkeypatch, capsys):
    ran = run_python_blocks(README, tables, tmp_path, monkeypatch)
    out = capsys.readouterr().out
    assert ran >= 2 and "GMACs per image" in out and "ms predicted" in out


def test_the_manual_is_one_page_per_topic_with_runnable_examples():
    names = {p.stem for p in DOCS}
    assert {"devices-and-threads", "search-strategies", "workers", "data-and-models",
            "figures-and-exit-codes"} <= names
    with_code = [p.stem for p in DOCS if python_blocks(p.read_text())]
    assert len(with_code) >= 4, with_code


@pytest.mark.parametrize("page", [p for p in DOCS if python_blocks(p.read_text())], ids=lambda p: p.name)
def test_the_docs_python_blocks_run_as_written(page, tables, tmp_path, monkeypatch):
    assert run_python_blocks(page, tables, tmp_path, monkeypatch) >= 1


def test_the_image_example_prepares_the_photo_as_timm_does(tables, tmp_path, monkeypatch, capsys):
    """docs/data-and-models.md runs an exported model on a photo from its ONNX metadata alone (issue 28 item 7): the
    input it makes is timm's eval transform of the photo, and it names the class the model gives it."""
    import torch
    from PIL import Image
    from timm.data import create_transform

    from vitsearch.data import model_input

    namespace: dict = {"__name__": "__readme__"}
    run_python_blocks(ROOT / "docs" / "data-and-models.md", tables, tmp_path, monkeypatch, namespace)
    model = namespace["model"]
    expected = create_transform(**model_input(model), is_training=False)(Image.open("photo.jpg").convert("RGB"))
    torch.testing.assert_close(torch.from_numpy(namespace["x"]), expected[None], atol=1e-5, rtol=0)
    with torch.no_grad():
        assert capsys.readouterr().out.splitlines()[-1] == "ABCDEFGHIJ"[int(model.eval()(expected[None]).argmax())]


def command_lines(text: str) -> list[list[str]]:
    """The argument lists of every ``vitsearch`` command in ```bash blocks (comments, env settings and ``&&``
    chains taken apart)."""
    found = []
    for block in re.findall(r"^```bash\n(.*?)^```$", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():  # continued lines joined
            words = shlex.split(line, comments=True)
            while words:
                chain = words.index("&&") if "&&" in words else len(words)
                part, words = words[:chain], words[chain + 1:]
                at = next((i for i, w in enumerate(part) if w == "vitsearch" or w.endswith("/vitsearch")), None)
                if at is not None:
                    found.append(part[at + 1:])
    return found


def test_every_vitsearch_command_in_the_readme_and_docs_parses():
    from vitsearch.cli import build_parser

    pages = [README, *DOCS]
    commands = {str(page.relative_to(ROOT)): command_lines(page.read_text()) for page in pages}
    readme_commands = {args[0] for args in commands["README.md"] if args}
    assert {"pretrain", "info", "profile", "search", "report", "plot", "finalize", "export"} <= readme_commands
    parser = build_parser()
    for sub in [parser, *next(a for a in parser._actions if a.dest == "command").choices.values()]:
        sub.allow_abbrev = False  # a page spells each option out: `--storag` must not pass for `--storage`
    bad = []
    for name, lines in commands.items():
        for args in lines:
            try:
                parser.parse_args(args)
            except SystemExit:
                bad.append(f"{name}: vitsearch {shlex.join(args)}")
    assert not bad, "command lines the CLI refuses:\n" + "\n".join(bad)


def test_the_fresh_machine_commands_are_the_ones_ci_runs():
    text = README.read_text()
    section = text[text.index("## On a fresh machine"):]
    section = section[:section.index("\n## ", 1)]
    main_job, tests = re.findall(r"^```bash\n(.*?)\n^```$", section, flags=re.S | re.M)
    setup = "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && "
    assert main_job == setup + ".venv/bin/vitsearch search --budget 60%"
    assert tests == setup + ".venv/bin/python -m pytest -q"
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()  # CI runs the README's test command verbatim


def anchors(page: Path) -> set[str]:
    """The link targets a page defines: explicit ``<a id>`` anchors and GitHub's heading slugs."""
    text = page.read_text()
    ids = set(re.findall(r'<a id="([^"]+)"></a>', text))
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.M):
        ids.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return ids


def links(page: Path) -> list[tuple[Path, str]]:
    """Every relative link of a page: (the file it points to, its anchor or '')."""
    found = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # https://..., mailto:
        path, _, anchor = target.partition("#")
        found.append(((page.parent / path).resolve() if path else page, anchor))
    return found


def test_every_link_resolves_and_every_claim_is_quoted():
    manual = [README, *DOCS, *sorted((ROOT / "vitsearch").rglob("*.md")), ROOT / "latency_tables" / "README.md"]
    broken = []
    for page in [*manual, RESULTS, HISTORY]:
        for path, anchor in links(page):
            if not path.exists() or (anchor and path.suffix == ".md" and anchor not in anchors(path)):
                broken.append(f"{page.relative_to(ROOT)} -> {path.relative_to(ROOT)}#{anchor}")
    assert not broken, "links to nothing:\n" + "\n".join(broken)

    claims = re.findall(r'<a id="(claim-[^"]+)"></a>', RESULTS.read_text())
    assert len(claims) >= 10
    table = RESULTS.read_text().split("## Claims", 1)[1].split("\n## ", 1)[0]
    assert all(f'<a id="{c}"></a>' in table for c in claims)  # rows of the claims table, not stray anchors
    quoted = {anchor for page in manual for path, anchor in links(page) if path == RESULTS}
    assert not quoted - set(claims) - {""}, "a page links into RESULTS.md other than to a claim's row"
    in_code = {m for f in (ROOT / "vitsearch").rglob("*.py")
               for m in re.findall(r"RESULTS\.md#([\w-]+)", f.read_text())}
    assert not in_code - set(claims), "the code names a claim RESULTS.md does not have"
    assert not set(claims) - quoted - in_code, "claims that neither the pages nor the code quote"


def test_import_vitsearch_reaches_every_stage_lazily():
    import subprocess
    import sys

    code = ("import sys, vitsearch; assert 'torch' not in sys.modules; "
            "assert callable(vitsearch.pruning.apply) and callable(vitsearch.report.write_report); "
            "assert not hasattr(vitsearch, 'no_such_stage')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(README.parent), "PATH": ""})
    assert done.returncode == 0, done.stderr
