"""Credentials and keys: hashed tokens, the catalog's people, the decision key, dev set-up.

Pure file-system tests (no server): each uses its own temporary data folder.
"""

from __future__ import annotations

import stat
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fireline.errors import CompileError
from fireline.identity import signing
from fireline.identity.dev import dev_credential_path, ensure_dev_identity
from fireline.identity.keys import DecisionKeyError, key_path, load_decision_key, read_key
from fireline.identity.people import People
from fireline.identity.tokens import TokenStore, tokens_path
from fireline.operator.auth import Principal, is_loopback
from fireline.operator.decision_signing import Signer
from fireline.runtime.settings import Settings

CATALOG = """
roles:
  sre-oncall: {tier: 1, members: [alice, bob]}
  sre-senior: {tier: 2, members: [carol]}
  anyone: {tier: 1}
"""


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    playbooks = tmp_path / "playbooks"
    playbooks.mkdir()
    (playbooks / "catalog.yaml").write_text(textwrap.dedent(CATALOG).lstrip())
    return Settings(playbooks_dir=playbooks, data_dir=tmp_path / "data")


class TestTokenStore:
    def test_issued_token_proves_its_person_and_only_its_hash_is_kept(
        self, settings: Settings
    ) -> None:
        """The clear token never reaches the file; the file is 0600; the token maps to bob."""
        store = TokenStore.of(settings)
        token, record = store.issue("bob", label="laptop")
        assert token.startswith(f"fl_{record.id}_")
        text = tokens_path(settings).read_text()
        assert token not in text
        assert token.split("_", 2)[2] not in text
        assert record.sha256 in text
        assert mode_of(tokens_path(settings)) == 0o600
        assert TokenStore.of(settings).person_of(token) == "bob"

    def test_wrong_malformed_and_huge_tokens_prove_nobody(self, settings: Settings) -> None:
        """One changed character, another id, garbage or a megabyte: all None."""
        store = TokenStore.of(settings)
        token, _ = store.issue("alice")
        flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
        other_id = "fl_00000000_" + token.split("_", 2)[2]
        for given in (flipped, other_id, "fl_", "", "Bearer x", "fl_" + "a" * 1_000_000):
            assert store.person_of(given) is None

    def test_revoked_token_stops_working_for_another_process(self, settings: Settings) -> None:
        """A revoke written by one store (the CLI) is seen by another (the API) at once."""
        api_side, cli_side = TokenStore.of(settings), TokenStore.of(settings)
        token, record = cli_side.issue("alice")
        assert api_side.person_of(token) == "alice"
        second, _ = cli_side.issue("alice")
        assert cli_side.revoke(record.id) == record
        assert api_side.person_of(token) is None
        assert api_side.person_of(second) == "alice"
        assert cli_side.revoke(record.id) is None
        assert [r.person for r in api_side.records()] == ["alice"]

    def test_a_token_with_a_lifetime_expires(self, settings: Settings) -> None:
        """--valid-for: the token proves its person until then, nobody after."""
        store = TokenStore.of(settings)
        token, record = store.issue("carol", valid_for=timedelta(hours=1))
        assert record.expires_at is not None
        assert store.person_of(token) == "carol"
        assert store.person_of(token, now=record.expires_at - timedelta(seconds=1)) == "carol"
        assert store.person_of(token, now=record.expires_at) is None


class TestPeople:
    def test_members_of_roles_are_people(self, settings: Settings) -> None:
        """Role members are known; a role without members adds nobody."""
        people = People.of(settings)
        assert people.names() == {"alice", "bob", "carol"}
        assert "alice" in people
        assert "mallory" not in people
        assert people.first() == "alice"

    def test_catalog_people_are_people(self, settings: Settings) -> None:
        """Edits to the catalog are picked up without a restart."""
        people = People.of(settings)
        assert "dana" not in people
        catalog = settings.playbooks_dir / "catalog.yaml"
        catalog.write_text(catalog.read_text() + "  lead: {tier: 3, members: [dana]}\n")
        assert "dana" in people

    def test_people_listed_with_their_roles(self, settings: Settings) -> None:
        """A person under `people:` is known; one who lists a role can be the dev person."""
        catalog = settings.playbooks_dir / "catalog.yaml"
        catalog.write_text(
            "people:\n  zoe: {roles: [first-line]}\n"
            "roles:\n  first-line: {tier: 0}\n  sre-oncall: {tier: 1, members: [alice]}\n"
        )
        people = People.of(settings)
        assert people.names() == {"zoe", "alice"}
        assert people.first() == "zoe"

    def test_a_broken_catalog_keeps_the_last_good_roster(self, settings: Settings) -> None:
        """Mid-edit garbage does not lock everyone out; a catalog broken from the start is an
        error the caller reports."""
        people = People.of(settings)
        assert "bob" in people
        catalog = settings.playbooks_dir / "catalog.yaml"
        catalog.write_text("roles: [this is: not a mapping\n")
        assert "bob" in people
        with pytest.raises(CompileError):
            People.of(settings).names()


class TestDecisionKey:
    def test_generated_once_private_and_stable(self, settings: Settings) -> None:
        """Without configuration the key is made under data/ (0600) and then reused."""
        first = load_decision_key(settings)
        assert mode_of(key_path(settings)) == 0o600
        again = load_decision_key(settings)
        assert (again.key_id, again.public) == (first.key_id, first.public)
        assert first.public == signing.public_key_of(first.private)

    def test_configured_key_must_exist_and_be_a_key(self, tmp_path: Path) -> None:
        """A typo in FIRELINE_DECISION_KEY_FILE is an error, not a silently new key."""
        missing = Settings(decision_key_file=tmp_path / "nope", data_dir=tmp_path)
        with pytest.raises(DecisionKeyError, match="does not exist"):
            load_decision_key(missing)
        garbage = tmp_path / "garbage"
        garbage.write_text("not a key\n")
        with pytest.raises(DecisionKeyError, match="unreadable"):
            read_key(garbage)


class TestSigner:
    def test_verified_decisions_are_signed_over_the_step_inputs(self, settings: Settings) -> None:
        """The signature verifies with the run's trusted keys and binds person, step, inputs."""
        signer = Signer(settings)
        alice = Principal(person="alice", verified=True, method="token")
        inputs = {"url": "http://x/poke", "json": {"ticket": 1}}
        signed = signer.sign(alice, "wf-1", "poke", "approve", inputs)
        assert signed is not None
        claim = signed.claim
        assert (claim.workflow_id, claim.step, claim.action, claim.person) == (
            "wf-1",
            "poke",
            "approve",
            "alice",
        )
        assert claim.inputs_digest == signing.inputs_digest(inputs)
        now = datetime.now(UTC)
        assert signing.verify_decision(signed, signer.trusted_keys(), now) is None
        later = now + timedelta(seconds=settings.decision_ttl_seconds + 1)
        assert "expired" in (signing.verify_decision(signed, signer.trusted_keys(), later) or "")
        other = Signer(settings.model_copy(update={"data_dir": settings.data_dir / "other"}))
        assert signing.verify_decision(signed, other.trusted_keys(), now) is not None

    def test_unverified_people_get_no_signature(self, settings: Settings) -> None:
        """A development-mode name is never signed, so the workflow sees it as unverified."""
        dev = Principal(person="alice", verified=False, method="development")
        assert Signer(settings).sign(dev, "wf-1", "poke", "approve", {}) is None


class TestDevIdentity:
    def test_first_start_makes_key_and_credential_then_reuses_them(
        self,
        settings: Settings,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """fireline up's hook: dev mode on, a key and a credential for the catalog's first."""
        dev = ensure_dev_identity(settings)
        assert dev.dev_mode is True
        said = capsys.readouterr().err
        assert "development credential for alice" in said
        assert "decision signing key" in said
        credential = dev_credential_path(settings)
        assert mode_of(credential) == 0o600
        token = credential.read_text().strip()
        assert TokenStore.of(settings).person_of(token) == "alice"
        assert key_path(settings).exists()

        ensure_dev_identity(settings)
        assert capsys.readouterr().err == ""
        assert credential.read_text().strip() == token
        assert len(TokenStore.of(settings).records()) == 1

    def test_a_revoked_dev_credential_is_replaced(self, settings: Settings) -> None:
        """If someone revoked the dev token, the next start issues a fresh one."""
        ensure_dev_identity(settings)
        store = TokenStore.of(settings)
        (record,) = store.records()
        store.revoke(record.id)
        ensure_dev_identity(settings)
        token = dev_credential_path(settings).read_text().strip()
        assert store.person_of(token) == "alice"


class TestLoopback:
    @pytest.mark.parametrize(
        ("host", "expected"),
        [
            ("127.0.0.1", True),
            ("127.8.0.1", True),
            ("::1", True),
            ("localhost", True),
            ("0.0.0.0", False),
            ("10.0.0.1", False),
            ("fireline.test", False),
            (None, False),
        ],
    )
    def test_hosts(self, host: str | None, expected: bool) -> None:
        """Only loopback addresses count: 0.0.0.0 binds every interface."""
        assert is_loopback(host) is expected
