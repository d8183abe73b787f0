"""The product tour run by ``make demo`` / ``clustermesh demo``: :func:`run_tour`."""

from lab.tour.steps import DEFAULT_NAME, run_tour, tour_blockers

__all__ = ["DEFAULT_NAME", "run_tour", "tour_blockers"]
