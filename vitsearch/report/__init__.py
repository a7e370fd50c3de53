"""Reports and plots of a study folder: the last stage of the pipeline, where a user decides what to ship.

- :mod:`.load`: the study folder read back as a :class:`StudyRecord` (:func:`load_study`);
- :mod:`.info`: what each plot shows, as data (pure, tested on its own);
- :mod:`.draw`: matplotlib drawing functions that take that data and return Axes;
- :mod:`.render`: ``report.md`` and a self-contained ``report.html``, and the overlay chart of several studies.

```python
from vitsearch.report import load_study, pareto_info, draw_pareto, write_report
study = load_study("digits-cpu-60pct-brief")          # or a study folder's path
ax = draw_pareto(pareto_info(study))                   # a matplotlib Axes
files = write_report(study)                            # report.md, report.html, figures/*.png|svg
trials = trials_dataframe("digits-cpu-60pct-brief")    # a pandas DataFrame: lists as lists, rejected: NaN
```
"""
from ..studyfolder import StudyFolder, existing_studies
from .draw import draw_flops, draw_overlay, draw_pareto, draw_tokens, draw_validation, save_figure
from .info import (FlopsInfo, OverlayInfo, ParetoInfo, Point, Series, TokenInfo, ValidationInfo, check_comparable,
                   flops_info, front_steps, overlay_info, pareto_info, token_info, validation_info)
from .load import Entry, StudyRecord, TableValidation, load_study, trials_dataframe
from .render import ReportFiles, plot_overlay, report, summary, write_report

__all__ = [
    "Entry", "FlopsInfo", "OverlayInfo", "ParetoInfo", "Point", "ReportFiles", "Series", "StudyFolder", "StudyRecord",
    "TableValidation", "TokenInfo", "ValidationInfo", "check_comparable", "draw_flops", "draw_overlay", "draw_pareto",
    "draw_tokens", "draw_validation", "existing_studies", "flops_info", "front_steps", "load_study", "overlay_info",
    "pareto_info", "plot_overlay", "report", "save_figure", "summary", "token_info", "trials_dataframe",
    "validation_info", "write_report",
]
