"""Small general helpers: per-sample seeding, module modes, settings checks, the paper's LR schedule."""

from mcrobust.utils.schedules import OneCycleSchedule, PaperSchedule

__all__ = ["OneCycleSchedule", "PaperSchedule"]
