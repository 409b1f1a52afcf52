"""Roles: owner and arbiter are Django groups; operators are staff users."""

from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, Group
from django.db import models
from rest_framework.permissions import BasePermission
from rest_framework.request import Request


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ARBITER = "arbiter", "Arbiter"
    STAFF = "staff", "Operator"


GROUP_ROLES = (Role.OWNER, Role.ARBITER)


def user_roles(user: AbstractBaseUser | AnonymousUser) -> list[str]:
    """The roles a user holds, sorted."""
    if not user.is_authenticated:
        return []
    roles = set(user.groups.filter(name__in=GROUP_ROLES).values_list("name", flat=True))  # type: ignore[union-attr]
    if getattr(user, "is_staff", False):
        roles.add(Role.STAFF)
    return sorted(roles)


def user_has_role(user: AbstractBaseUser | AnonymousUser, role: Role) -> bool:
    """Whether the user holds `role`; operators (staff) are not owners or arbiters unless also granted those."""
    if not user.is_authenticated:
        return False
    if role == Role.STAFF:
        return bool(getattr(user, "is_staff", False))
    return user.groups.filter(name=role).exists()  # type: ignore[union-attr]


def role_grant(*, user: AbstractBaseUser, role: Role) -> None:
    """Give a user a group role."""
    if role == Role.STAFF:
        user.is_staff = True  # type: ignore[attr-defined]
        user.save(update_fields=["is_staff"])
        return
    group, _ = Group.objects.get_or_create(name=role)
    user.groups.add(group)  # type: ignore[attr-defined]


class HasRole(BasePermission):
    """DRF permission: subclasses set `role`."""

    role: Role = Role.STAFF
    message = "this operation needs a role you do not hold"

    def has_permission(self, request: Request, view: Any) -> bool:
        return user_has_role(request.user, self.role)


class IsOwner(HasRole):
    role = Role.OWNER
    message = "this operation needs the owner role"


class IsArbiter(HasRole):
    role = Role.ARBITER
    message = "this operation needs the arbiter role"


def roles_context(request: Any) -> dict[str, list[str]]:
    """Template context processor: the signed-in user's roles, for navigation."""
    return {"user_roles": user_roles(request.user)}
