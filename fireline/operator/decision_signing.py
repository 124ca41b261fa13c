"""Decisions the API signs for a verified person, bound to the inputs the person saw.

Both the run routes (``fireline.operator.api``) and the incident routes
(``fireline.operator.incidents_api``) sign this way, with the one decision key the runs and
incidents trust.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.client import Client

from fireline.identity import signing
from fireline.identity.keys import load_decision_key
from fireline.operator import operations
from fireline.operator.auth import Principal
from fireline.runtime.settings import Settings


class Signer:
    """Signs what a verified person decided, bound to the step's inputs as the run shows them.

    The digest is taken from the run's own status query just before the decision is sent, so
    an approval covers exactly the inputs the approver could see; unverified (development)
    identities get no signature, and the workflow records them as unverified.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.key = load_decision_key(settings)

    def trusted_keys(self) -> dict[str, str]:
        return self.key.trusted(self.settings.decision_trusted_keys)

    def sign(
        self,
        who: Principal,
        workflow_id: str,
        step: str,
        action: signing.DecisionAction,
        inputs: dict[str, Any] | None,
    ) -> signing.SignedDecision | None:
        """None for an unverified person; ``inputs`` None: a decision no inputs apply to
        (a cancel), signed with an empty digest."""
        if not who.verified:
            return None
        claim = signing.DecisionClaim(
            workflow_id=workflow_id,
            step=step,
            action=action,
            person=who.person,
            inputs_digest=signing.inputs_digest(inputs) if inputs is not None else "",
            expires_at=datetime.now(UTC) + timedelta(seconds=self.settings.decision_ttl_seconds),
        )
        return signing.sign_decision(claim, self.key.private, self.key.key_id)


async def step_inputs(
    c: Client, workflow_id: str, step: str, seen_digest: str | None = None
) -> dict[str, Any]:
    """The step's resolved inputs as the run reports them ({} when none or for a step it does
    not know: the workflow refuses an unknown step with its own reason).

    With ``seen_digest``, refuses when they are no longer the inputs the decider looked at.
    """
    state = await operations.status(c, workflow_id)
    try:
        inputs = state.step(step).inputs or {}
    except KeyError:
        inputs = {}
    if seen_digest is not None and seen_digest != signing.inputs_digest(inputs):
        raise operations.OperationRefused(
            f"the inputs of step {step!r} changed since you looked "
            f"(now {signing.inputs_digest(inputs)[:12]}); look again and decide anew"
        )
    return inputs
