"""Who sent a message, and what that sender may ask for: checked by the service that acts on it.

RabbitMQ validates the `user_id` property against the connection's user (a publisher cannot claim to be
another user), and every gongji process sets it (services.shared.broker). A deployment with one broker user
per service (deploy/rabbitmq/definitions.json; prefixed names in tests) gives each message an authenticated
sender role. With a single shared user (the local `guest` of `gongji up` and the tests) there is only one
principal, so these checks cannot tell senders apart and let everything through; the broker permissions of
the per-user deployment are then the first line and these checks the second.
"""
from __future__ import annotations

ROLES = ("bureau", "accounts", "pos", "simulator", "admin")


def role_of(user_id: str | None) -> str | None:
    """The service role of a broker user: its name, or a name ending in "-<role>" (prefixed test users)."""
    if not user_id:
        return None
    for role in ROLES:
        if user_id == role or user_id.endswith(f"-{role}"):
            return role
    return None


def reply_allowed(user_id: str | None, reply_to: str | None, own_user: str | None) -> bool:
    """Replies go only to a reply queue of the authenticated sender: the POS's to "pos", a bureau's to its
    "bureau-…" key, a client's to its own "client-…" key. A sender cannot aim an answer at someone else's
    queue (a refusal planted in the POS's reply queue would make it record "refused" for a visit that settles)."""
    if not reply_to or role_of(own_user) is None:
        return True  # no answer wanted, or one shared user (we are no service user): nobody to tell apart
    role = role_of(user_id)
    if role is None:
        return False  # a message without a known sender (no user_id) gets no answer from a service user
    if role == "admin":
        return True
    if role == "pos":
        return reply_to == "pos"
    if role == "bureau":
        return reply_to.startswith("bureau-")
    if role == "simulator":
        return reply_to.startswith("client-")
    return False  # the accounts service asks nobody for answers


def outcome_publisher_ok(user_id: str | None, own_user: str | None) -> bool:
    """An outcome event counts only if the POS user published it. An observer that is itself no service
    user (one shared user, `gongji up`, the tests) has nobody to tell apart and takes every event."""
    if role_of(own_user) is None:
        return True
    return role_of(user_id) == "pos"
