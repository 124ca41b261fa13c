"""Decision rights in the catalog: per risk, who may approve and how many must.

The defaults are the floor every catalog gets: ``critical`` needs two distinct approvers, the
person who started a run may not approve its ``high``/``critical`` steps, and only ``low`` steps
accept an unsigned decision.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from fireline.plan import Risk
from fireline.playbook.spec import Strict

MIN_APPROVALS: dict[Risk, int] = {Risk.critical: 2}
"""The policy floor no catalog can lower: critical steps need two people."""


class RiskRule(Strict):
    min_tier: int | None = Field(default=None, ge=0, le=3)
    roles: list[str] = Field(default_factory=list)
    """Holding one of these roles qualifies too (e.g. a DBA for database steps)."""
    min_approvals: int | None = Field(default=None, ge=1, le=10)
    """Omitted: one, or the policy floor (two for critical)."""


class RightsSpec(Strict):
    risks: dict[Risk, RiskRule] = Field(default_factory=dict)
    separation_of_duties: list[Risk] = Field(default_factory=lambda: [Risk.high, Risk.critical])
    unsigned: list[Risk] = Field(default_factory=lambda: [Risk.low])
    owners: dict[str, str] = Field(default_factory=dict)
    """Playbook ``owner`` -> the role whose members decide for its ungated steps."""

    @model_validator(mode="after")
    def _floor(self) -> RightsSpec:
        for risk, floor in MIN_APPROVALS.items():
            rule = self.risks.get(risk)
            if rule is not None and rule.min_approvals is not None and rule.min_approvals < floor:
                raise ValueError(
                    f"{risk.value} steps need at least {floor} approvers; "
                    f"min_approvals {rule.min_approvals} would lower the floor"
                )
        missing = {Risk.high, Risk.critical} - set(self.separation_of_duties)
        if missing:
            raise ValueError(
                "separation_of_duties must keep "
                + ", ".join(sorted(r.value for r in missing))
                + ": the person who starts a run may never approve its riskiest steps"
            )
        return self

    def rule(self, risk: Risk) -> RiskRule:
        rule = self.risks.get(risk, RiskRule())
        floor = MIN_APPROVALS.get(risk, 1)
        return rule.model_copy(update={"min_approvals": max(rule.min_approvals or 1, floor)})
