"""A tiny OpenID Connect provider for the tests of web/oidc.py, run as its own process:

    python -m tests.web.oidc_issuer --client-id cyclonetix --client-secret s3cret [--name localhost]

It prints `listening <issuer URL>` once it serves (a free port on 127.0.0.1), then answers:

    /.well-known/openid-configuration   the discovery document
    /authorize    approves at once the configured user: 302 to redirect_uri with a code and
                  the state (client_id and PKCE S256 required)
    /token        the code (once), its redirect_uri, the PKCE verifier and the client's
                  secret (HTTP Basic) checked; an RS256 ID token signed with joserfc (what
                  authlib itself uses for JOSE now), with the login's nonce
    /jwks         the public key
    /test/config  POST {"claims": {...}, "tamper": null | "state" | "nonce" | "signature" |
                  "audience" | "expired" | "issuer", "interactive": false}: the user's claims,
                  what to get wrong, and whether /authorize answers with a page whose
                  "Approve" link (#approve) goes back (as a person clicks at a real provider)
    /test/seen    GET: what the token endpoint saw ({"exchanges": n, "pkce_ok": n})
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import http.server
import json
import secrets
import threading
import time
import urllib.parse
from typing import Any

from joserfc import jwt
from joserfc.jwk import RSAKey

KID = "test-key-1"
KEY = RSAKey.generate_key(2048, parameters={"kid": KID, "use": "sig", "alg": "RS256"})
# The same kid, another key: a token it signs has a signature the JWKS cannot match.
IMPOSTOR = RSAKey.generate_key(2048, parameters={"kid": KID, "use": "sig", "alg": "RS256"})


class Provider:
    def __init__(self, client_id: str, client_secret: str) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.issuer = ""
        self.claims: dict[str, Any] = {"preferred_username": "alice", "groups": ["cx-ops"]}
        self.tamper: str | None = None
        self.interactive = False
        self.codes: dict[str, dict[str, str]] = {}
        self.seen = {"exchanges": 0, "pkce_ok": 0}
        self.lock = threading.Lock()

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
        }

    def authorize(self, query: dict[str, str]) -> tuple[int, str]:
        """(status, Location or error text)."""
        if query.get("client_id") != self.client_id or query.get("response_type") != "code":
            return 400, "unknown client or response_type"
        if query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            return 400, "PKCE S256 required"
        code = secrets.token_urlsafe(16)
        with self.lock:
            self.codes[code] = {
                "nonce": query.get("nonce", ""),
                "challenge": query["code_challenge"],
                "redirect_uri": query.get("redirect_uri", ""),
            }
        state = query.get("state", "")
        if self.tamper == "state":
            state = "forged-" + state
        target = query.get("redirect_uri", "")
        joined = "&" if "?" in target else "?"
        return 302, f"{target}{joined}{urllib.parse.urlencode({'code': code, 'state': state})}"

    def token(self, form: dict[str, str], authorization: str) -> tuple[int, dict[str, Any]]:
        expected = base64.b64encode(
            f"{urllib.parse.quote(self.client_id)}:{urllib.parse.quote(self.client_secret)}".encode()
        ).decode()
        if authorization != f"Basic {expected}":
            return 401, {"error": "invalid_client"}
        with self.lock:
            self.seen["exchanges"] += 1
            grant = self.codes.pop(form.get("code", ""), None)
        if grant is None or form.get("redirect_uri") != grant["redirect_uri"]:
            return 400, {"error": "invalid_grant"}
        verifier = form.get("code_verifier", "").encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=").decode()
        if digest != grant["challenge"]:
            return 400, {"error": "invalid_grant", "error_description": "PKCE verifier"}
        with self.lock:
            self.seen["pkce_ok"] += 1
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "user-1",
            "aud": self.client_id,
            "iat": now,
            "exp": now + 300,
            "nonce": grant["nonce"],
            **self.claims,
        }
        if self.tamper == "nonce":
            claims["nonce"] = "another-login"
        elif self.tamper == "audience":
            claims["aud"] = "another-client"
        elif self.tamper == "expired":
            claims["iat"], claims["exp"] = now - 7200, now - 3600
        elif self.tamper == "issuer":
            claims["iss"] = "https://evil.example"
        key = IMPOSTOR if self.tamper == "signature" else KEY
        id_token = jwt.encode({"alg": "RS256", "kid": KID}, claims, key, algorithms=["RS256"])
        access = secrets.token_urlsafe(24)
        return 200, {"access_token": access, "token_type": "Bearer", "id_token": id_token}


def handler_for(provider: Provider) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def _send(self, status: int, body: Any, location: str | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            if location is not None:
                self.send_header("location", location)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _send_html(self, page: str) -> None:
            data = page.encode()
            self.send_response(200)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            if url.path == "/.well-known/openid-configuration":
                self._send(200, provider.discovery())
            elif url.path == "/jwks":
                self._send(200, {"keys": [KEY.as_dict(private=False)]})
            elif url.path == "/authorize":
                status, where = provider.authorize(query)
                if status == 302 and provider.interactive:
                    page = f'<!doctype html><a id="approve" href="{html.escape(where)}">Approve</a>'
                    self._send_html(page)
                elif status == 302:
                    self._send(302, {}, location=where)
                else:
                    self._send(status, {"error": where})
            elif url.path == "/test/seen":
                self._send(200, provider.seen)
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length).decode()
            if self.path == "/token":
                form = dict(urllib.parse.parse_qsl(body))
                status, answer = provider.token(form, self.headers.get("authorization", ""))
                self._send(status, answer)
            elif self.path == "/test/config":
                config = json.loads(body)
                provider.claims = config.get("claims", provider.claims)
                provider.tamper = config.get("tamper")
                provider.interactive = bool(config.get("interactive", False))
                self._send(200, {"ok": True})
            else:
                self._send(404, {"error": "not found"})

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument(
        "--name", default="127.0.0.1", help="the host in its URL (localhost: another site)"
    )
    args = parser.parse_args()
    provider = Provider(args.client_id, args.client_secret)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_for(provider))
    provider.issuer = f"http://{args.name}:{server.server_address[1]}"
    print(f"listening {provider.issuer}", flush=True)
    server.serve_forever()  # until terminated


if __name__ == "__main__":
    main()
