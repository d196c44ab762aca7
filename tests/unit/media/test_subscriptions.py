"""SubscriptionState and permission_allows: what a session receives, wants and is refused."""

from __future__ import annotations

from livekit.protocol import rtc

from services.media.subscriptions import Step, SubscriptionState, permission_allows


def ready() -> SubscriptionState:
    state = SubscriptionState()
    state.mark_ready()
    return state


def test_before_the_first_answer_subscriptions_are_deferred_then_handed_back_once() -> None:
    state = SubscriptionState()
    assert state.subscribe("TR_a", allowed=True) is Step.DEFERRED
    assert state.subscribed == set() and state.wanted == {"TR_a"}
    assert state.mark_ready() == {"TR_a"} and state.mark_ready() == set()
    assert state.subscribe("TR_a", allowed=True) is Step.ADD_LEG
    assert state.subscribe("TR_a", allowed=True) is Step.NOTHING


def test_a_refused_track_is_told_once_and_stays_wanted() -> None:
    state = ready()
    assert state.subscribe("TR_a", allowed=False) is Step.TELL_DENIED
    assert state.subscribe("TR_a", allowed=False) is Step.NOTHING
    assert state.wanted == {"TR_a"} and state.denied == {"TR_a"} and state.subscribed == set()


def test_revoke_and_restore_keep_the_wish() -> None:
    state = ready()
    state.subscribe("TR_a", allowed=True)
    assert state.revoke("TR_a") is True and state.revoke("TR_a") is False
    assert state.subscribed == set() and state.wanted == {"TR_a"} and state.denied == {"TR_a"}
    assert state.restore("TR_a") is True and state.restore("TR_a") is False
    assert state.subscribe("TR_a", allowed=True) is Step.ADD_LEG


def test_unsubscribe_forgets_the_wish_unless_asked_to_keep_it() -> None:
    state = ready()
    state.subscribe("TR_a", allowed=True)
    assert state.unsubscribe("TR_a", keep_wanted=True) is True and state.wanted == {"TR_a"}
    state.subscribe("TR_a", allowed=True)
    assert state.unsubscribe("TR_a") is True and state.wanted == set()
    assert state.unsubscribe("TR_a") is False
    state.subscribe("TR_b", allowed=False)
    state.unsubscribe("TR_b")
    assert state.denied == set()  # no longer wanted, so no longer refused either


def test_permission_rules_as_livekit_reads_them() -> None:
    assert permission_allows(None, "PA_b", "bob", "TR_a")
    assert permission_allows(rtc.SubscriptionPermission(all_participants=True), "PA_b", "bob", "TR_a")
    rules = rtc.SubscriptionPermission(track_permissions=[
        rtc.TrackPermission(participant_identity="bob", track_sids=["TR_a"]),
        rtc.TrackPermission(participant_sid="PA_c", all_tracks=True),
    ])
    assert permission_allows(rules, "PA_b", "bob", "TR_a")
    assert not permission_allows(rules, "PA_b", "bob", "TR_other")
    assert permission_allows(rules, "PA_c", "carol", "TR_other")
    assert not permission_allows(rules, "PA_d", "dave", "TR_a")
    assert not permission_allows(rtc.SubscriptionPermission(), "PA_b", "bob", "TR_a")  # nobody named
