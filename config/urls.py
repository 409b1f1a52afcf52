from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import TemplateView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from config.health import HealthApi, after_login
from ownership.api import MeApi, TokenApi
from ownership.views import LoginView
from timestamps.api import JwksApi, TsaApi

api_v1 = [
    path("", include("timestamps.urls")),
    path("", include("ownership.urls")),
    path("", include("verification.urls")),
    path("auth/token", TokenApi.as_view(), name="auth-token"),
    path("me", MeApi.as_view(), name="me"),
    path("health", HealthApi.as_view(), name="health"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
]

urlpatterns = [
    path("", TemplateView.as_view(template_name="home.html"), name="home"),
    path("accounts/login/", LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/start/", after_login, name="after-login"),
    path("admin/", admin.site.urls),
    path("", include("ownership.web_urls")),
    path("", include("verification.web_urls")),
    path("tsa", TsaApi.as_view(), name="tsa"),
    path(".well-known/jwks.json", JwksApi.as_view(), name="jwks"),
    path("api/v1/", include(api_v1)),
]

# JSON under /api/, Django's pages elsewhere (config/errors.py)
handler400 = "config.errors.bad_request"
handler403 = "config.errors.permission_denied"
handler404 = "config.errors.page_not_found"
handler500 = "config.errors.server_error"
