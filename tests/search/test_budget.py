import pytest

from vitsearch.search import Budget, parse_budget
from vitsearch.errors import VitsearchError


@pytest.mark.parametrize("text, ms", [("30ms", 30.0), ("30 ms", 30.0), ("0.03s", 30.0), ("33.3ms", 33.3),
                                      (" 12.5MS ", 12.5), ("500us", 0.5), (".5s", 500.0)])
def test_absolute_budgets_become_milliseconds(text, ms):
    budget = parse_budget(text)
    assert budget.ms == pytest.approx(ms) and budget.resolve(100.0) == pytest.approx(ms)


def test_relative_budget_is_a_share_of_the_unpruned_latency():
    budget = parse_budget("60%")
    assert budget == Budget(fraction=0.6)
    assert budget.resolve(50.0) == pytest.approx(30.0)
    assert str(budget) == "60%"


@pytest.mark.parametrize("text", ["", "fast", "30", "30 fps", "-5ms", "0ms", "150%", "30ms 40ms", "3e1ms"])
def test_anything_else_is_a_clear_error(text):
    with pytest.raises(VitsearchError, match="budget"):
        parse_budget(text)
