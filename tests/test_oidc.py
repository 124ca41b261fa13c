"""OpenID Connect against a real local issuer: an HTTP server on 127.0.0.1 serving a JWKS.

The keys are made in the test; tokens are minted with PyJWT as an identity provider would.
"""

from __future__ import annotations

import json
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from temporalio.client import Client

from fireline.identity.oidc import OidcConfigError, OidcError, OidcVerifier
from fireline.messages import RunPhase, StepStatus
from fireline.operator.api import create_app
from fireline.runtime.settings import Settings
from tests import test_operations as shared
from tests.test_api import serving
from tests.test_operations import Reply, Target, finished, step_is, until

# Fixtures shared with the operations tests (a real dev server, workers and HTTP target).
playbooks_dir = shared.playbooks_dir
fl_settings = shared.fl_settings
workers = shared.workers
target = shared.target

ISSUER = "https://idp.example.test/realms/ops"
AUDIENCE = "fireline"
CATALOG = """
roles:
  sre-oncall: {tier: 1, members: [alice, bob]}
"""


@dataclass
class Issuer:
    """Signing keys, the JWKS URL serving their public halves, and how often it was fetched."""

    url: str
    rsa_key: rsa.RSAPrivateKey
    ec_key: ec.EllipticCurvePrivateKey
    fetches: list[str] = field(default_factory=list)

    def mint(
        self,
        person: str = "alice",
        *,
        key: Any = None,
        alg: str = "RS256",
        kid: str = "rsa-1",
        lifetime_s: float = 300,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + lifetime_s,
            "preferred_username": person,
            "email": f"{person}@example.test",
        }
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        signing_key = key if key is not None else self.rsa_key
        return jwt.encode(payload, signing_key, algorithm=alg, headers={"kid": kid})


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_jwk = json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key()))
    ec_jwk = json.loads(ECAlgorithm.to_jwk(ec_key.public_key()))
    rsa_jwk.update(kid="rsa-1", use="sig", alg="RS256")
    ec_jwk.update(kid="ec-1", use="sig", alg="ES256")
    body = json.dumps({"keys": [rsa_jwk, ec_jwk]}).encode()
    fetches: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fetches.append(self.path)
            if self.path != "/jwks.json":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
        yield Issuer(url=url, rsa_key=rsa_key, ec_key=ec_key, fetches=fetches)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def verifier(issuer: Issuer, **kwargs: Any) -> OidcVerifier:
    return OidcVerifier(issuer=ISSUER, audience=AUDIENCE, jwks_url=issuer.url, **kwargs)


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class TestVerifier:
    def test_good_tokens_name_their_person(self, issuer: Issuer) -> None:
        """RS256 and ES256 tokens from the issuer map to preferred_username (or email)."""
        assert verifier(issuer).verify(issuer.mint("alice")) == "alice"
        es = issuer.mint("bob", key=issuer.ec_key, alg="ES256", kid="ec-1")
        assert verifier(issuer).verify(es) == "bob"
        by_email = verifier(issuer, person_claim="email")
        assert by_email.verify(issuer.mint("alice")) == "alice@example.test"

    def test_keys_are_cached(self, issuer: Issuer) -> None:
        """Many tokens, one JWKS fetch per verifier."""
        v = verifier(issuer)
        before = len(issuer.fetches)
        for _ in range(5):
            v.verify(issuer.mint("alice"))
        assert len(issuer.fetches) - before == 1

    @pytest.mark.parametrize(
        ("case", "complaint"),
        [
            ("expired", "expired"),
            ("not_yet_valid", "not yet valid"),
            ("wrong_audience", "Audience"),
            ("wrong_issuer", "issuer"),
            ("no_exp", "exp"),
            ("no_person", "preferred_username"),
            ("wrong_key", "Signature verification failed"),
            ("unknown_kid", "no matching issuer key"),
            ("alg_none", "algorithm 'none' is not accepted"),
            ("hs256_with_public_key", "algorithm 'HS256' is not accepted"),
        ],
    )
    def test_refusals(self, issuer: Issuer, case: str, complaint: str) -> None:
        """Every way a token can be wrong is refused, with a reason naming it."""
        stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        tokens = {
            "expired": lambda: issuer.mint(lifetime_s=-120),
            "not_yet_valid": lambda: issuer.mint(nbf=int(time.time()) + 600),
            "wrong_audience": lambda: issuer.mint(aud="someone-else"),
            "wrong_issuer": lambda: issuer.mint(iss="https://evil.example.test"),
            "no_exp": lambda: issuer.mint(exp=None),
            "no_person": lambda: issuer.mint(preferred_username=None),
            "wrong_key": lambda: issuer.mint(key=stranger),
            "unknown_kid": lambda: issuer.mint(kid="nobody"),
            "alg_none": lambda: jwt.encode(
                {"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 60, "sub": "x"},
                None,
                algorithm="none",
            ),
            # The classic confusion attack: HMAC keyed with the issuer's *public* key.
            "hs256_with_public_key": lambda: _hs256_forgery(issuer),
        }
        with pytest.raises(OidcError, match=complaint):
            verifier(issuer).verify(tokens[case]())

    def test_garbage_is_not_a_jwt(self, issuer: Issuer) -> None:
        """Not even a JWT: refused before any key is fetched."""
        with pytest.raises(OidcError, match="not a JWT"):
            verifier(issuer).verify("definitely.not.a-jwt")

    def test_unsafe_algorithms_are_a_configuration_error(self, issuer: Issuer) -> None:
        """HS* and none can never be configured."""
        for algorithms in (["HS256"], ["RS256", "none"]):
            with pytest.raises(OidcConfigError, match="not accepted"):
                verifier(issuer, algorithms=algorithms)

    def test_half_a_configuration_is_an_error(self) -> None:
        """Issuer without audience and JWKS URL names what is missing; nothing set is off."""
        assert OidcVerifier.from_settings(Settings()) is None
        with pytest.raises(OidcConfigError, match="FIRELINE_OIDC_AUDIENCE"):
            OidcVerifier.from_settings(Settings(oidc_issuer=ISSUER))


def _hs256_forgery(issuer: Issuer) -> str:
    """A token MAC'd with the public key PEM (PyJWT refuses to do this itself, so by hand)."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": int(time.time()) + 60,
        "preferred_username": "alice",
    }
    payload = b64(json.dumps(claims).encode())
    mac = hmac.new(public_pem(issuer.rsa_key), f"{header}.{payload}".encode(), hashlib.sha256)
    return f"{header}.{payload}.{b64(mac.digest())}"


@pytest.fixture
def oidc_settings(issuer: Issuer, tmp_path: Path) -> Settings:
    playbooks = tmp_path / "playbooks"
    playbooks.mkdir()
    (playbooks / "catalog.yaml").write_text(textwrap.dedent(CATALOG).lstrip())
    return Settings(
        playbooks_dir=playbooks,
        data_dir=tmp_path / "data",
        temporal_address="127.0.0.1:1",
        oidc_issuer=ISSUER,
        oidc_audience=AUDIENCE,
        oidc_jwks_url=issuer.url,
    )


class TestApiWithOidc:
    async def test_tokens_map_to_people_or_are_refused(
        self, issuer: Issuer, oidc_settings: Settings
    ) -> None:
        """Good token: its person; expired or wrongly signed: 401; not in the catalog: 403."""
        transport = httpx.ASGITransport(app=create_app(oidc_settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://fireline.test") as api:

            async def whoami(token: str) -> httpx.Response:
                return await api.get("/whoami", headers={"Authorization": f"Bearer {token}"})

            good = await whoami(issuer.mint("alice"))
            assert good.status_code == 200, good.text
            assert good.json() == {"person": "alice", "verified": True, "method": "oidc"}

            expired = await whoami(issuer.mint("alice", lifetime_s=-120))
            assert expired.status_code == 401
            assert "expired" in expired.json()["detail"]
            assert expired.headers["www-authenticate"] == "Bearer"

            stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            forged = await whoami(issuer.mint("alice", key=stranger))
            assert forged.status_code == 401

            unknown = await whoami(issuer.mint("mallory"))
            assert unknown.status_code == 403
            assert "'mallory' is not a person in the catalog" in unknown.json()["detail"]

            huge = await whoami("x" * 10_000)
            assert huge.status_code == 401


class TestApprovalWithOidc:
    async def test_an_oidc_login_approves_as_its_person(
        self, issuer: Issuer, workers: Settings, target: Target, client: Client
    ) -> None:
        """A run started and approved with OIDC tokens: requester and approver are the people
        the tokens name, and the approval is signed (recorded verified)."""
        target.route("POST", "/poke", Reply(200, {}))
        settings = workers.model_copy(
            update={"oidc_issuer": ISSUER, "oidc_audience": AUDIENCE, "oidc_jwks_url": issuer.url}
        )
        async with serving(settings) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            carol = {"Authorization": f"Bearer {issuer.mint('carol')}"}
            alice = {"Authorization": f"Bearer {issuer.mint('alice')}"}
            body = {"playbook": "gated", "inputs": {"base": target.base_url}}
            created = await http.post("/runs", json=body, headers=carol)
            assert created.status_code == 201, created.text
            wid = created.json()["workflow_id"]
            await until(client, wid, step_is("poke", StepStatus.awaiting_approval))
            approved = await http.post(f"/runs/{wid}/steps/poke/approve", json={}, headers=alice)
            assert approved.status_code == 200, approved.text
            (record,) = approved.json()["approvals"]
            assert (record["by"], record["verified"]) == ("alice", True)
            state = await until(client, wid, finished)
        assert state.requested_by == "carol"
        assert state.phase == RunPhase.succeeded
