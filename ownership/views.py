"""Server-rendered account pages."""

from typing import Any

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from rest_framework.throttling import SimpleRateThrottle


class LoginView(auth_views.LoginView):
    """Django's login page, with failed attempts per client address limited by the `login` rate."""

    redirect_authenticated_user = True

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        limit, period = SimpleRateThrottle.parse_rate(None, settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["login"])  # type: ignore[arg-type]
        key = f"login-failures:{request.META.get('REMOTE_ADDR', '')}"
        if cache.get(key, 0) >= limit:
            form = self.get_form()
            form.add_error(None, "Too many failed sign-ins from your address; wait a minute and try again.")
            response = self.render_to_response(self.get_context_data(form=form))
            response.status_code = 429
            return response
        response = super().post(request, *args, **kwargs)
        if response.status_code != 302:
            cache.add(key, 0, timeout=period)
            cache.incr(key)
        return response
