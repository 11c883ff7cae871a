"""Who may call a service and how often: its API keys, each key's rate, and the wrong keys an address may send.

Every worker takes its share of each limit (the policy's figures are for the whole service), so
``workers`` processes together allow what the policy says. With Redis the keys are re-read off
the request path (a revoked key stops within ``recheck`` seconds on every worker); on the
embedded store a file's ``stat()`` on the request path sees a revocation at once.
"""

from __future__ import annotations

from conveyor.policies.errors import RequestRefused
from conveyor.policies.serving import ServingPolicy
from conveyor.registry.workspace import Workspace
from conveyor.serving.auth import RateLimiter, Role, open_api_keys
from conveyor.serving.metrics import ServiceMetrics

__all__ = ["Access"]


class Access:
    def __init__(self, ws: Workspace, policy: ServingPolicy, metrics: ServiceMetrics, *, recheck: float) -> None:
        self.policy, self.metrics = policy, metrics
        shared_keys = ws.settings.redis_url is not None
        self.keys = open_api_keys(ws, background=True, recheck=recheck) if shared_keys else open_api_keys(ws)
        self.share = 1 / policy.workers  # each worker takes its share of every key's rate
        limit, failed = policy.rate_limit, policy.failed_auth_limit
        self.limiter = RateLimiter(limit.per_second * self.share, max(1, int(limit.burst * self.share)))
        self.failures = RateLimiter(failed.per_second * self.share, max(1, int(failed.burst * self.share)))

    def authorize(self, token: str | None, *, admin: bool = False, client: str = "?") -> Role:
        """The caller's role; 401 without a valid key (429 past the address's failures), 403 for a
        predict key at an admin endpoint."""
        role = self.keys.check(token)
        if role is None:
            if admin or self.policy.api_keys_required or token:
                if not self.failures.allow(client):
                    self.metrics.client_errors.labels("auth_limited").inc()
                    raise RequestRefused(429, "too many requests with a wrong key from this address; retry later")
                self.metrics.client_errors.labels("unauthorized").inc()
                raise RequestRefused(401, "a valid API key is required (header `Authorization: Bearer <key>`)")
            role = Role("anonymous", admin=False)
        if admin and not role.admin:
            self.metrics.client_errors.labels("forbidden").inc()
            raise RequestRefused(403, f"the key of {role.name!r} is not an admin key")
        return role

    def admit(self, role: Role) -> None:
        """A request's place in its key's rate (429 over it)."""
        rate = role.per_second * self.share if role.per_second else None
        burst = max(1, int(role.burst * self.share)) if role.burst else None
        if not self.limiter.allow(role.name, rate=rate, burst=burst):
            self.metrics.client_errors.labels("rate_limited").inc()
            shown = role.per_second or self.policy.rate_limit.per_second
            raise RequestRefused(429, f"rate limit of {shown:g} requests/s for {role.name!r} exceeded; retry later")

    def refresh(self) -> None:
        self.keys.refresh()

    def close(self) -> None:
        self.keys.close()
