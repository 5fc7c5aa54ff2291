"""manta login's session slots: a server process runs at most MAX_SESSIONS sessions, and
one account at most MAX_SESSIONS_PER_ACCOUNT of them, so its sessions cannot keep every
other account out (manta/server/login.py)."""

from __future__ import annotations

import contextlib

from manta.server.login import MAX_SESSIONS, MAX_SESSIONS_PER_ACCOUNT, SessionSlots, session_slots


def test_one_account_holds_at_most_its_share_and_others_still_get_in() -> None:
    slots = SessionSlots(total=5, per_account=2)
    with contextlib.ExitStack() as held:
        for _ in range(2):
            assert slots.refusal("alice") is None
            held.enter_context(slots.held_by("alice"))
        assert "of this account" in (slots.refusal("alice") or "")
        assert slots.refusal("bob") is None  # another account is not kept out
        held.enter_context(slots.held_by("bob"))
    assert slots.held == {}  # every session that ended gave its slot back
    assert slots.refusal("alice") is None


def test_the_process_cap_holds_whoever_asks() -> None:
    slots = SessionSlots(total=2, per_account=8)
    slots.threads.total_tokens = 0  # every thread busy
    assert "on this server" in (slots.refusal("carol") or "")


def test_a_slot_is_given_back_when_the_session_fails() -> None:
    slots = SessionSlots(total=4, per_account=1)
    with contextlib.suppress(RuntimeError), slots.held_by("alice"):
        raise RuntimeError("the container did not start")
    assert slots.refusal("alice") is None


def test_the_defaults() -> None:
    slots = session_slots()
    assert (slots.threads.total_tokens, slots.per_account) == (MAX_SESSIONS, MAX_SESSIONS_PER_ACCOUNT)
    assert MAX_SESSIONS_PER_ACCOUNT < MAX_SESSIONS
