"""A platform's identity provider for the benchmark and the tests: signing keys made with `cryptography`, their
key set (JWKS) and OpenID configuration served over HTTP on loopback, and tokens minted with them. The benchmark's
users sign in with these tokens, so its set-up makes no password hashes."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ISSUER_PATH = "/idp"
AUDIENCE = "playgate-bench"


@dataclass
class SigningKey:
    """A private key, its `kid` and algorithm."""

    kid: str
    algorithm: str
    private: Any

    def public_jwk(self) -> dict[str, Any]:
        """The public half as a JWK (what the key set publishes)."""
        public = self.private.public_key()
        if self.algorithm == "RS256":
            jwk: dict[str, Any] = RSAAlgorithm.to_jwk(public, as_dict=True)
        elif self.algorithm == "ES256":
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig"}


def new_key(kid: str, algorithm: str = "RS256") -> SigningKey:
    """A fresh signing key for `algorithm` (RS256, ES256 or EdDSA)."""
    if algorithm == "RS256":
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif algorithm == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    return SigningKey(kid, algorithm, private)


@dataclass
class IdentityProvider:
    """Serves /idp/.well-known/openid-configuration and /idp/jwks.json; counts key set fetches; keys rotate."""

    keys: list[SigningKey]
    server: ThreadingHTTPServer | None = None
    fetches: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        """Where the provider answers."""
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def issuer(self) -> str:
        """The `iss` of its tokens."""
        return self.base_url + ISSUER_PATH

    @property
    def jwks_url(self) -> str:
        """Its key set's URL."""
        return self.issuer + "/jwks.json"

    def start(self) -> IdentityProvider:
        """Serve the key set on a free loopback port, in a thread of its own."""
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == ISSUER_PATH + "/.well-known/openid-configuration":
                    body: dict[str, Any] = {"issuer": provider.issuer, "jwks_uri": provider.jwks_url}
                elif self.path == ISSUER_PATH + "/jwks.json":
                    with provider.lock:
                        provider.fetches += 1
                        body = {"keys": [k.public_jwk() for k in provider.keys]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args: Any) -> None:
                """Quiet: the benchmark's and the tests' output stays theirs."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, name="test-idp", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def rotate(self, key: SigningKey) -> None:
        """Publish `key` beside the others (a key rotation as identity providers do it)."""
        with self.lock:
            self.keys.append(key)

    def env(self, **extra: str) -> dict[str, str]:
        """The PLAYGATE_* settings that make a PlayGate trust this provider."""
        return {
            "PLAYGATE_JWKS_URL": self.jwks_url,
            "PLAYGATE_TOKEN_ISSUER": self.issuer,
            "PLAYGATE_TOKEN_AUDIENCE": AUDIENCE,
            **extra,
        }

    def mint(self, user_id: str, *, key: SigningKey | None = None, ttl_s: int = 600, **claims: Any) -> str:
        """A token for `user_id` signed with `key` (default the first), valid for ttl_s; `claims` override."""
        key = key or self.keys[0]
        now = int(time.time())
        payload = {"sub": user_id, "iss": self.issuer, "aud": AUDIENCE, "iat": now, "exp": now + ttl_s, **claims}
        return jwt.encode(payload, key.private, algorithm=key.algorithm, headers={"kid": key.kid})
