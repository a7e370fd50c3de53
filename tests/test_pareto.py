import pytest

from vitsearch.pareto import dominated_by_front, dominates, hypervolume, pareto_front


def test_front_keeps_only_non_dominated_points_by_latency():
    points = [(0.90, 10.0), (0.95, 20.0), (0.80, 5.0), (0.85, 12.0), (0.95, 25.0)]
    assert pareto_front(points) == [2, 0, 1]
    assert dominates((0.9, 10.0), (0.85, 12.0)) and not dominates((0.9, 10.0), (0.9, 10.0))


def test_hypervolume_is_the_dominated_area_below_the_reference():
    points = [(0.9, 10.0), (0.95, 20.0), (0.8, 5.0), (0.85, 12.0)]
    # Steps: 0.8 from 5 to 10, 0.9 from 10 to 20, 0.95 from 20 to 30.
    assert hypervolume(points, ref_latency=30.0) == pytest.approx(5 * 0.8 + 10 * 0.9 + 10 * 0.95)
    assert hypervolume(points, ref_latency=30.0, ref_accuracy=0.85) == pytest.approx(10 * 0.05 + 10 * 0.1)
    assert hypervolume([(0.9, 40.0)], ref_latency=30.0) == 0.0


def test_a_baseline_is_matched_when_a_front_point_is_as_good_and_as_fast():
    front = [(0.9, 10.0), (0.95, 20.0)]
    assert dominated_by_front(front, (0.9, 12.0)) and dominated_by_front(front, (0.95, 20.0))
    assert not dominated_by_front(front, (0.96, 20.0))
