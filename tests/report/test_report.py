"""Loading study folders, the report documents, the CLI's report and plot commands, and the HTML as Chromium
shows it."""
from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from vitsearch.cli import main
from vitsearch.errors import VitsearchError
from vitsearch.report import ReportFiles, existing_studies, load_study, write_report
from vitsearch.report.tables import fmt_tokens

from .conftest import require_chromium, write_study

DATA = Path(__file__).parent / "data"


def test_load_study_reads_every_file_and_attaches_measured_latency(reports):
    folder = write_study(reports, "s", finalized=[{"config": "evovit:4=0.8", "predicted_ms": 1.55, "measured_ms": 1.61,
                                                   "accuracy": 0.905, "trial": 2}])
    study = load_study("s", reports)
    assert (study.name, study.folder, study.metric, study.device, study.budget_ms) == ("s", folder, "top1", "cpu", 1.6)
    assert len(study.trials) == 6 and len(study.front) == 3 and [b.kind for b in study.baselines][:2] == \
        ["unpruned", "uniform"]
    measured = {e.config: (e.measured_ms, e.measured_source) for e in study.front}
    # Trial 1's config was measured by the table's validation; trial 2's by its finalized model; trial 0 never.
    assert measured == {"spvit:3=0.5": (None, None), "spvit:3=0.7,6=0.7": (1.47, "validation"),
                        "evovit:4=0.8": (1.61, "finalized")}
    assert study.trials[4].accuracy is None and not study.trials[4].feasible and study.trials[4].blocks == (6,)
    assert study.notes == [] and study.validation is not None
    assert load_study(folder).name == "s"  # a folder's path works as well as a name


def test_an_unknown_study_lists_the_existing_ones(reports):
    write_study(reports, "b-study")
    write_study(reports, "a-study")
    (reports / "not-a-study").mkdir()
    assert existing_studies(reports) == ["a-study", "b-study"]
    with pytest.raises(VitsearchError, match=r"no study 'c-study' in .*existing studies: a-study, b-study"):
        load_study("c-study", reports)
    with pytest.raises(VitsearchError, match="not a study folder: it has no study.json"):
        load_study("not-a-study", reports)
    with pytest.raises(VitsearchError, match="holds no studies yet: run vitsearch search"):
        load_study("x", reports.parent / "elsewhere")


def test_a_damaged_file_is_named(reports):
    folder = write_study(reports, "s")
    (folder / "trials.json").write_text("[{")
    with pytest.raises(VitsearchError, match=r"trials.json is not valid JSON"):
        load_study("s", reports)
    (folder / "trials.json").write_text(json.dumps([{"config": "spvit:3=0.7"}]))
    with pytest.raises(VitsearchError, match=r"trials.json has a record without a readable 'predicted_ms'"):
        load_study("s", reports)


def test_tokens_fold_into_runs():
    assert fmt_tokens([65, 65, 65, 46, 46, 33]) == "65×3 · 46×2 · 33"
    assert fmt_tokens([]) == "—"


@dataclass
class Written:
    reports: Path
    stdout: list[str]
    files: ReportFiles


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Written:
    """One full report of the synthetic study (with a finalized row) through the CLI, shared by the tests that read
    it: drawing every figure is the slow part of a report."""
    reports = tmp_path_factory.mktemp("written") / "reports"
    write_study(reports, "s", finalized=[{"config": "evovit:4=0.8", "predicted_ms": 1.55, "measured_ms": 1.61,
                                          "measured_at_table_speed_ms": 1.5, "accuracy": 0.905, "trial": 2,
                                          "untrained_accuracy": 0.71}])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["report", "s", "--reports", str(reports)]) == 0
    lines = out.getvalue().strip().splitlines()
    record = json.loads(lines[-1])
    files = ReportFiles(Path(record["markdown"]), Path(record["html"]),
                        {name: {fmt: Path(p) for fmt, p in paths.items()} for name, paths in record["figures"].items()})
    return Written(reports, lines, files)


def test_the_markdown_report_has_the_decision_the_front_and_the_provenance(written):
    md = written.files.markdown.read_text()
    assert "**Most accurate within the budget (on val):** trial 2, `evovit:4=0.8`: 90.00% top-1 on test, -1.00 " \
           "points vs unpruned 91.00% on test at 1.550 ms predicted, 1.29× faster than unpruned (2.000 ms)." in md
    assert "not `evovit:3=0.7,5=0.7,7=0.7`" in md  # the uniform baseline the search did not match
    # The front table: method, placement, per-layer tokens, test accuracy, val accuracy (a record written before
    # the test split has none), predicted and measured latency, GMACs, speedup.
    assert ("| 1 | spvit | 3: 0.7, 6: 0.7 | 65×3 · 47×3 · 35×2 | 88.00 | -3.00 | — | 1.400 | 1.470 | 0.406 | 1.43× |"
            in md)
    assert "| 0 | spvit | 3: 0.5 | 65×3 · 34×5 | 80.00 | -11.00 | — | 1.200 | — |" in md
    # The finalized row: measured vs predicted, as measured and at the table's speed, and the fields this report
    # does not know yet, as columns.
    assert "## Finalized models" in md and "| 1.550 | 1.610 | — | 1.29× | — | -3.7 | +3.3 | 1.5 | 0.71 |" in md
    for figure in ("pareto", "methods", "tokens", "flops", "validation"):
        assert f"](figures/{figure}.png)" in md and f"[SVG](figures/{figure}.svg)" in md
        assert written.files.figures[figure]["png"].is_file() and written.files.figures[figure]["svg"].is_file()
    assert "sha256 abababababababab" in md and "digits: 1438 train / 359 val" in md
    assert "postgresql://user:***@db.example:5432/vs" in md and "secret" not in md  # no credentials in a report
    assert "median |error| 5.0%" in md.replace("\\|", "|")
    # What to do next, what training cost, and no rank statistic from 3 validation points.
    assert "**Next:** `vitsearch finalize s --trial 2" not in md and "Trial 2 is finalized" in md
    assert "Brief training: 4 candidates in 4.0 s (median 1.0 s each), plus 3.0 s for the baselines." in md
    assert "Kendall tau" not in md and "## Predicted vs measured latency" in md
    assert "1 finalized model(s) of this study measured on the device: median |error| 3.7%" in md


def test_the_summary_names_the_next_command(reports):
    folder = write_study(reports, "plain", validation=False)
    md = write_report(load_study(folder)).markdown.read_text()
    assert f"**Next:** `vitsearch finalize plain --trial 2 --reports {reports}`" in md
    assert "## Predicted vs measured latency" in md and "no validation beside the latency table" in md


def test_the_html_report_is_self_contained(written):
    page = written.files.html.read_text()
    assert page.count('src="data:image/png;base64,') == 5  # the fronts per method too: two methods
    assert re.findall(r'(?:src|href)="(?!data:|#)', page) == []  # nothing to fetch: it opens offline
    assert '<table class="front">' in page and "<code>evovit:4=0.8</code>" in page


def test_a_study_without_results_gets_a_report_that_says_so(reports, capsys):
    write_study(reports, "empty", with_results=False)
    assert main(["report", "empty", "--reports", str(reports)]) == 0
    out = capsys.readouterr().out
    md = (reports / "empty" / "report.md").read_text()
    assert "**This study has no completed trials yet**" in md and "the search has not finished" in md
    assert json.loads(out.strip().splitlines()[-1])["trials"] == 0


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=10000"]
# Appended to a copy of the report: once the page has loaded, it records what a reader would see.
PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const shown = images.filter(i => i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 100);
  const front = document.querySelector("table.front");
  document.body.dataset.images = images.length + "/" + shown.length;
  document.body.dataset.frontRows = front ? front.tBodies[0].rows.length : -1;
  document.body.dataset.frontHeight = front ? Math.round(front.getBoundingClientRect().height) : 0;
});
</script>"""


def chromium_shows(chromium: str, page: str, folder: Path) -> dict[str, str]:
    """What the probe saw when headless Chromium rendered ``page`` from ``folder`` (a copy elsewhere, as the page
    must be self-contained)."""
    probe = folder / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                                 probe.as_uri()], capture_output=True, text=True, timeout=120)
    body = re.search(r"<body([^>]*)>", result.stdout)
    assert body, f"chromium rendered nothing: {result.stderr[-2000:]}"
    return dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1)))


@pytest.mark.server
def test_chromium_shows_the_front_table_and_every_image(written, tmp_path):
    chromium = require_chromium()
    page = written.files.html.read_text()
    seen = chromium_shows(chromium, page, tmp_path)
    assert seen["images"] == "5/5" and seen["front-rows"] == "3" and int(seen["front-height"]) > 50
    # The probe notices a broken image: the check above is not vacuous.
    broken = re.sub(r'base64,[^"]{100}', "base64,AAAA", page, count=1)
    assert chromium_shows(chromium, broken, tmp_path)["images"] == "5/4"


def test_cli_report_prints_the_paths_and_a_json_line(written):
    record = json.loads(written.stdout[-1])
    assert record["markdown"] == str(written.reports / "s" / "report.md") and Path(record["html"]).is_file()
    assert record["front"] == ["spvit:3=0.5", "spvit:3=0.7,6=0.7", "evovit:4=0.8"] and record["validation"]
    assert sorted(record["figures"]) == ["flops", "methods", "pareto", "tokens", "validation"]
    assert any(line.strip() == str(written.reports / "s" / "report.html") for line in written.stdout)


def test_cli_bad_input_is_one_message_without_traceback(reports, capsys):
    write_study(reports, "top1-study")
    write_study(reports, "top5-study", metric="top5")
    assert main(["report", "missing", "--reports", str(reports)]) == 2
    err = capsys.readouterr().err
    assert "error: no study 'missing'" in err and "existing studies: top1-study, top5-study" in err
    assert main(["plot", "top1-study", "top5-study", "--reports", str(reports)]) == 2
    err = capsys.readouterr().err
    assert "cannot share one chart" in err and "metric top5" in err
    write_study(reports, "empty", with_results=False)
    assert main(["plot", "empty", "--reports", str(reports)]) == 2
    err += capsys.readouterr().err
    assert "error: nothing to plot: empty: no trained trial within budget yet" in err
    assert "Traceback" not in err


def test_cli_plot_overlays_studies_into_the_file_asked_for(reports, tmp_path, capsys):
    write_study(reports, "a")
    write_study(reports, "b", device="pixel", trials=[("spvit:3=0.5", 1.0, 0.82)])
    write_study(reports, "empty", with_results=False)
    out = tmp_path / "charts" / "overlay.svg"
    assert main(["plot", "a", "b", "empty", "--reports", str(reports), "--output", str(out)]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["files"] == {"svg": str(out)} and out.read_text().startswith("<?xml")
    assert record["skipped"] == ["empty: no trained trial within budget yet"]
    assert main(["plot", "a", "--reports", str(reports)]) == 0  # default: the study's figures folder
    capsys.readouterr()
    assert main(["plot", "a", str(reports / "a"), "b", "--reports", str(reports), "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["skipped"] == [
        f"{reports / 'a'}: the same study as one given before, drawn once"]
    assert "left out: " in captured.out
    assert (reports / "a" / "figures" / "overlay.png").is_file()


def test_a_real_search_folder_renders(tmp_path):
    """The files of a real tiny search (``run_search`` on the digits model, budget 95%, 8 trials of 5 steps) and of
    its table's validation (``vitsearch profile --validate 6``), kept in tests/report/data: the contract as written."""
    folder = tmp_path / "reports" / "digits-real"
    shutil.copytree(DATA / "digits-real", folder)
    table = tmp_path / "tables" / "cpu" / "d64-h4-l8-m4-p4-i32-c1-b1-fp32.csv"
    table.parent.mkdir(parents=True)
    for suffix in ("csv", "json"):
        shutil.copy(DATA / f"{table.stem}.validation.{suffix}", table.parent)
    meta = json.loads((folder / "study.json").read_text())
    (folder / "study.json").write_text(json.dumps({**meta, "latency_table": str(table)}))
    study = load_study(folder)
    assert (len(study.trials), len(study.front), len(study.baselines)) == (8, 2, 11) and study.notes == []
    files = write_report(study)
    assert sorted(files.figures) == ["flops", "methods", "pareto", "tokens", "validation"]
    md = files.markdown.read_text()
    assert "8 completed trials: 5 trained, 3 rejected before training" in md
    assert "| 5 | evovit | 5: 0.4, 6: 0.85 | 65×5 · 28 · 25×2 | 52.09 |" in md
    assert "medians as measured: median |error| 45.1%" in md  # a table validated before drift references


def test_the_report_states_test_and_keeps_the_front_the_search_chose_on_val(reports):
    """Issue 25: the accuracy a report states is test's; the front and the pick are the search's, made on val. Here
    test would choose differently: `evovit:4=0.8` is on the test front but dominated on val by `evovit:3=0.6`."""
    from vitsearch.report.info import pareto_info
    from vitsearch.report.tables import headline, trials_table

    folder = write_study(reports, "splits")
    val = {"spvit:3=0.5": 0.70, "spvit:3=0.7,6=0.7": 0.75, "evovit:4=0.8": 0.72, "evovit:3=0.6": 0.80}
    trials = json.loads((folder / "trials.json").read_text())
    for t in trials:
        t["val_accuracy"] = val.get(t["config"])
    (folder / "trials.json").write_text(json.dumps(trials))
    front = [t for t in trials if t["config"] in ("spvit:3=0.5", "spvit:3=0.7,6=0.7", "evovit:3=0.6")]
    (folder / "front.json").write_text(json.dumps(front))  # as the search writes it: chosen on val
    study = load_study(folder)

    info = pareto_info(study)
    assert [(p.label, p.y) for p in info.front] == [("spvit:3=0.5", 80.0), ("spvit:3=0.7,6=0.7", 88.0),
                                                    ("evovit:3=0.6", 85.0)]  # val's front, at test accuracy
    assert info.y_label == "top-1 accuracy on test (%)"
    text = headline(study)
    assert "**Most accurate within the budget (on val):** trial 3, `evovit:3=0.6`: 85.00% top-1 on test " \
           "(val 80.00%), -6.00 points vs unpruned 91.00% on test" in text
    table = trials_table(study)
    rows = {r[1]: r for r in table.rows}
    assert table.headers[3:5] == ["top-1 test (%)", "val (%)"]
    assert rows["evovit:4=0.8"][3:5] == ["90.00", "72.00"] and rows["evovit:4=0.8"][-1] == "matched"
    assert rows["evovit:3=0.6"][-1] == "front"
    md = write_report(study).markdown.read_text()
    assert "Accuracy is on the test split, which no decision of the search reads" in md


def test_trials_dataframe_keeps_lists_and_leaves_rejected_trials_without_accuracy(study_folder):
    """vitsearch.report.trials_dataframe (issue 28 item 9): one row per trial, lists as lists (trials.csv holds their
    text), NaN where a trial was rejected before training (never a fake 0.0), the front marked."""
    import math

    from vitsearch.report import trials_dataframe

    frame = trials_dataframe(study_folder.name, study_folder.parent)
    records = json.loads((study_folder / "trials.json").read_text())
    assert list(frame["trial"]) == [r["trial"] for r in records] == list(range(6))
    assert frame.loc[1, "blocks"] == [3, 6] and frame.loc[1, "keep"] == [0.7, 0.7]
    assert frame.loc[1, "block_tokens"] == records[1]["block_tokens"] and isinstance(frame.loc[1, "block_tokens"], list)
    rejected = frame[frame["status"].str.startswith("rejected")]
    assert list(rejected["trial"]) == [4, 5] and all(math.isnan(a) for a in rejected["accuracy"])
    assert frame["accuracy"].min() == 0.80  # no 0.0 among them
    front = {r["trial"] for r in json.loads((study_folder / "front.json").read_text())}
    assert set(frame.loc[frame["on_front"], "trial"]) == front == {0, 1, 2}
