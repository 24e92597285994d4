"""What a run will do, computed once: `Plan` and `Step` (model.py), the rules
that decide each step (decide.py), the stored state they are decided against
(state.py), and the planner that counts what each step touches (build.py)."""

from segtool.plan.model import ACTIONS, Plan, Step

__all__ = ["ACTIONS", "Plan", "Step"]
