"""Browser hardening headers on every HTTP response of the API port.

Wrapped around the entry service's whole app (service.py, bentoml_runtime.wrap_entry_app), not
only our FastAPI app: BentoML's own routes (/livez, /readyz, /metrics, /schema.json) carry them
too, and so do the answers written by the layers around the app (BentoML's 504 request
deadline, its 429 concurrency limit, its 500s, the admission's 503). One policy for every
response: the pages (/ui/, /v1/docs) load only their own scripts, styles and data from this
origin, and a JSON or text answer opened in a browser can neither run nor load anything.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# No 'unsafe-inline' or 'unsafe-eval': the pages keep every script and style in files (the
# Swagger UI initializer too). img-src allows data: for the icons inlined in swagger-ui.css.
# frame-ancestors 'none' (and X-Frame-Options for older browsers): no page can frame ours to
# click-jack the prediction form.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    # Browsers must take the declared Content-Type: a JSON error echoing input is never HTML.
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Model names and hash fragments in our URLs are nobody else's business.
    "Referrer-Policy": "no-referrer",
}


class SecurityHeadersMiddleware:
    """Pure ASGI (no body buffering): adds each header the response does not set itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
