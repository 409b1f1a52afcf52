"""Server-rendered account pages."""

import time
from typing import Any

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from rest_framework.throttling import BaseThrottle


def _login_rate() -> tuple[int, int]:
    """(attempts, seconds) from the `login` throttle rate, e.g. "20/min"."""
    count, period = settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["login"].split("/")
    return int(count), {"s": 1, "m": 60, "h": 3600, "d": 86400}[period[0]]


class _FailureWindow:
    """Failed sign-ins counted in a fixed window per key; the window does not slide with each failure."""

    def __init__(self, key: str) -> None:
        self.key = f"login-failures:{key}"

    def count(self) -> int:
        count, expires = cache.get(self.key, (0, 0.0))
        return int(count) if expires > time.time() else 0

    def add(self, period: int) -> None:
        count, expires = cache.get(self.key, (0, 0.0))
        now = time.time()
        if expires <= now:
            count, expires = 0, now + period
        cache.set(self.key, (count + 1, expires), timeout=max(1, int(expires - now)))


class LoginView(auth_views.LoginView):
    """Django's login page; failed attempts are limited per client address and per username."""

    redirect_authenticated_user = True

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        limit, period = _login_rate()
        # The same client identity as the API throttles (honours MODELCOURT_NUM_PROXIES).
        client = BaseThrottle().get_ident(request)  # type: ignore[arg-type]
        username = str(request.POST.get("username", ""))[:150].lower()
        windows = [_FailureWindow(f"ip:{client}"), _FailureWindow(f"user:{username}")]
        if any(window.count() >= limit for window in windows):
            form = self.get_form()
            form.add_error(None, "Too many failed sign-ins; wait a minute and try again.")
            response = self.render_to_response(self.get_context_data(form=form))
            response.status_code = 429
            return response
        response = super().post(request, *args, **kwargs)
        if response.status_code != 302:
            for window in windows:
                window.add(period)
        return response
