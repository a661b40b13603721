"""Several coordinator URLs, one client: try the next replica when one is down.

``--coordinator URL1,URL2`` and ``GPUNET_URL=URL1,URL2`` name replicas of one network
(docs/replicas.md). The SDK, the CLI and the agent send every request through one of the
transports here: a request goes to the replica that answered last; when it cannot be reached
(no connection) or a proxy in front of it answers 502 or 503, the same request goes to the
next one, and the client sticks to the first that answers. Other failures (a timeout after the
request was sent) are not re-sent, since the replica may have acted on them, but the next
request starts with another replica.
"""

from __future__ import annotations

import ssl
import threading

import httpx

# answers of a load balancer or a replica that is not serving: the request was not handled
RETRY_STATUS = frozenset({502, 503})
# the request never reached a replica: safe to send again, even a POST
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)


def split_urls(text: str) -> list[str]:
    """``URL1,URL2`` -> the URLs, without trailing slashes (one URL gives a list of one)."""
    urls = [u.strip().rstrip("/") for u in text.split(",") if u.strip()]
    if not urls:
        raise ValueError("no coordinator URL")
    return urls


class Coordinators:
    """The replicas' URLs and the one in use (shared by every request of one client)."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = list(urls)
        self._at = 0
        self._lock = threading.Lock()

    @property
    def current(self) -> str:
        with self._lock:
            return self.urls[self._at]

    def order(self) -> list[int]:
        """Indices to try, the one in use first."""
        with self._lock:
            n = len(self.urls)
            return [(self._at + i) % n for i in range(n)]

    def use(self, i: int) -> None:
        with self._lock:
            self._at = i

    def skip(self, i: int) -> None:
        """Replica ``i`` failed: the next request starts with the one after it."""
        with self._lock:
            if self._at == i:
                self._at = (i + 1) % len(self.urls)

    def route(self, request: httpx.Request, i: int) -> None:
        """Point ``request`` (addressed to any replica) at replica ``i``."""
        url = str(request.url)
        for base in self.urls:
            if url == base or url.startswith(base + "/") or url.startswith(base + "?"):
                request.url = httpx.URL(self.urls[i] + url[len(base) :])
                request.headers["Host"] = request.url.netloc.decode("ascii")
                return


def _resendable(request: httpx.Request) -> bool:
    try:
        request.content  # noqa: B018 - a body already in memory can be sent again
    except httpx.RequestNotRead:
        return False  # a streamed upload: sent once
    return True


class FailoverTransport(httpx.BaseTransport):
    """The synchronous transport (SDK, CLI)."""

    def __init__(
        self,
        coordinators: Coordinators,
        verify: bool | ssl.SSLContext = True,
        inner: httpx.BaseTransport | None = None,
    ) -> None:
        self.coordinators = coordinators
        self._inner = inner or httpx.HTTPTransport(verify=verify)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        order = self.coordinators.order()
        again = _resendable(request)
        for n, i in enumerate(order):
            last = n == len(order) - 1 or not again
            self.coordinators.route(request, i)
            try:
                resp = self._inner.handle_request(request)
            except NOT_SENT:
                self.coordinators.skip(i)
                if last:
                    raise
                continue
            except httpx.TransportError:
                self.coordinators.skip(i)
                raise
            if resp.status_code in RETRY_STATUS and not last:
                resp.close()
                self.coordinators.skip(i)
                continue
            self.coordinators.use(i)
            return resp
        raise AssertionError("unreachable")  # pragma: no cover - the last try returns or raises

    def close(self) -> None:
        self._inner.close()


class AsyncFailoverTransport(httpx.AsyncBaseTransport):
    """The asynchronous transport (the agent)."""

    def __init__(
        self,
        coordinators: Coordinators,
        verify: bool | ssl.SSLContext = True,
        inner: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.coordinators = coordinators
        self._inner = inner or httpx.AsyncHTTPTransport(verify=verify)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        order = self.coordinators.order()
        again = _resendable(request)
        for n, i in enumerate(order):
            last = n == len(order) - 1 or not again
            self.coordinators.route(request, i)
            try:
                resp = await self._inner.handle_async_request(request)
            except NOT_SENT:
                self.coordinators.skip(i)
                if last:
                    raise
                continue
            except httpx.TransportError:
                self.coordinators.skip(i)
                raise
            if resp.status_code in RETRY_STATUS and not last:
                await resp.aclose()
                self.coordinators.skip(i)
                continue
            self.coordinators.use(i)
            return resp
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        await self._inner.aclose()


__all__ = [
    "AsyncFailoverTransport",
    "Coordinators",
    "FailoverTransport",
    "split_urls",
]
