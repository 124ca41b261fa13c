"""People in the catalog: who they are, which roles they hold, their tier, how to reach them.

Never a credential: API tokens are kept as hashes by ``fireline.identity``, and what the plan
freezes of a person is only name, roles and tier.
"""

from __future__ import annotations

from pydantic import Field

from fireline.playbook.spec import Strict


class Contact(Strict):
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=40)
    chat: str | None = Field(default=None, max_length=200)
    """A chat handle or channel (Slack, Matrix...)."""


class PersonSpec(Strict):
    roles: list[str] = Field(default_factory=list)
    tier: int | None = Field(default=None, ge=0, le=3)
    """Omitted: the highest tier of the person's roles."""
    contact: Contact = Field(default_factory=Contact)
    description: str = ""
