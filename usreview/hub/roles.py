"""Who may do what on the hub: groups, roles and scopes as data.

Least privilege: JupyterHub's default ``user`` role is overridden with no scopes at
all, so belonging to the hub gives nothing; every right comes from exactly one group.

============  ===============================================================================
group         rights
============  ===============================================================================
sites         reach the usreview service only (upload studies, fetch results); no server,
              no hub API beyond identifying themselves
reviewers     their own single-user server and tokens; the service; review studies
trainees      their own single-user server and tokens; the service; teaching cases
scientists    their own single-user server and tokens; the service; the de-identified case
              library (the teaching cases) for research
admins        JupyterHub's ``admin`` role (all of the hub) and usreview administration
============  ===============================================================================

Filters ``!user`` (the owner) keep every person's rights on their own server, tokens and
user model: a trainee cannot see or start a reviewer's server, and the hub answers 404
for a user it hides, as it does for one that does not exist. Finer rights inside the
usreview service are JupyterHub custom scopes (``custom:usreview:...``), checked by the
service's handlers.

Two services hold roles of their own: ``usreview`` (the hub-managed API, no extra
scopes: the hub tells it who the caller is) and ``usreview-admin`` (the token the
``usreview hub add-user``/``add-site`` commands use on a running hub). The latter can
create users, add them to the four non-admin groups and mint tokens for sites only; it
cannot make anybody an admin (JupyterHub lets only admins grant admin).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

__all__ = [
    "ADMIN_SERVICE",
    "CUSTOM_SCOPES",
    "GROUPS",
    "PERSON_ROLES",
    "SERVICE",
    "SITE_GROUP",
    "SITE_TOKEN_SCOPES",
    "group_for_role",
    "load_roles",
]

SERVICE: Final = "usreview"
"""Name of the hub-managed usreview service (URL prefix ``/services/usreview/``)."""

ADMIN_SERVICE: Final = "usreview-admin"
"""Name of the API-only service whose token the administration commands use."""

SITE_GROUP: Final = "sites"

PERSON_ROLES: Final = MappingProxyType(
    {"reviewer": "reviewers", "trainee": "trainees", "scientist": "scientists", "admin": "admins"}
)
"""``--role`` of ``usreview hub add-user`` -> the group it puts the person in."""

GROUPS: Final = (SITE_GROUP, *PERSON_ROLES.values())

_ACCESS_SERVICE: Final = f"access:services!service={SERVICE}"

CUSTOM_SCOPES: Final[Mapping[str, Mapping[str, Any]]] = MappingProxyType(
    {
        "custom:usreview:upload": {"description": "Send sealed studies to the hub."},
        "custom:usreview:results": {"description": "Fetch the sealed results of one's site."},
        "custom:usreview:review": {"description": "Review studies and sign reports."},
        "custom:usreview:train": {"description": "Work on teaching cases."},
        "custom:usreview:research": {
            "description": "Read the de-identified case library for research."
        },
        "custom:usreview:admin": {
            "description": "Administer usreview: sites, keys, the archive.",
            "subscopes": [
                "custom:usreview:review",
                "custom:usreview:train",
                "custom:usreview:research",
            ],
        },
    }
)
"""JupyterHub custom scopes for rights inside the usreview service."""

_OWN_SERVER: Final = (
    "servers!user",  # start and stop one's own server
    "access:servers!user",  # use it
    "read:users!user",  # one's own user model (the home page shows it)
    "users:activity!user",  # the server reports activity on its owner's behalf
    "tokens!user",  # one's own API tokens
)

SITE_TOKEN_SCOPES: Final = (_ACCESS_SERVICE, "custom:usreview:upload", "custom:usreview:results")
"""The scopes of a site and of the token ``add-site`` prints: the service, nothing else."""

_GROUP_SCOPES: Final = MappingProxyType(
    {
        SITE_GROUP: SITE_TOKEN_SCOPES,
        "reviewers": (*_OWN_SERVER, _ACCESS_SERVICE, "custom:usreview:review"),
        "trainees": (*_OWN_SERVER, _ACCESS_SERVICE, "custom:usreview:train"),
        "scientists": (*_OWN_SERVER, _ACCESS_SERVICE, "custom:usreview:research"),
    }
)

_ADMIN_SERVICE_SCOPES: Final = (
    "admin:users",  # create users (granting admin needs an admin: JupyterHub refuses)
    *(f"groups!group={group}" for group in GROUPS if group != "admins"),
    f"tokens!group={SITE_GROUP}",  # tokens for sites only
    "read:groups",
    "list:users",
)


def group_for_role(role: str) -> str:
    """Return the group of a person's ``--role``.

    Raises
    ------
    KeyError
        If ``role`` is not one of :data:`PERSON_ROLES`.
    """
    return PERSON_ROLES[role]


def load_roles() -> list[dict[str, Any]]:
    """Return ``c.JupyterHub.load_roles``: the roles of every group and service."""
    roles: list[dict[str, Any]] = [
        {
            "name": "user",
            "description": "Everybody: nothing (rights come from groups).",
            "scopes": [],
        },
        {"name": "admin", "groups": ["admins"]},
    ]
    for group, scopes in _GROUP_SCOPES.items():
        roles.append(
            {
                "name": f"usreview-{group}",
                "description": f"Members of the {group!r} group.",
                "scopes": list(scopes),
                "groups": [group],
            }
        )
    roles.append(
        {
            "name": "usreview-admins",
            "description": "usreview administration (besides JupyterHub's admin role).",
            "scopes": [_ACCESS_SERVICE, "custom:usreview:admin"],
            "groups": ["admins"],
        }
    )
    roles.append(
        {
            "name": ADMIN_SERVICE,
            "description": "The administration commands: add people and sites.",
            "scopes": list(_ADMIN_SERVICE_SCOPES),
            "services": [ADMIN_SERVICE],
        }
    )
    return roles
