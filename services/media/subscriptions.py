"""Which tracks one session receives, wants and is refused: pure state, no I/O.

A track is *wanted* once the participant asked for it (or auto-subscribe chose it for it). It
is *subscribed* once the publisher allows it and the subscriber PeerConnection can carry media:
the first offer carries only data channels, so subscriptions asked for before its answer are
*deferred*. A wanted track the publisher's subscription permission refuses is *denied*; it
stays wanted and comes back when the publisher allows it again.
"""

from __future__ import annotations

from enum import Enum

from livekit.protocol import rtc


class Step(Enum):
    """What the session does after asking for a track."""

    NOTHING = "nothing"  # already subscribed, or refused and the client already told
    TELL_DENIED = "tell_denied"  # refused for the first time: tell the client
    DEFERRED = "deferred"  # kept until the first answer
    ADD_LEG = "add_leg"  # subscribed now: add the track's leg and renegotiate


class SubscriptionState:
    def __init__(self) -> None:
        self.wanted: set[str] = set()
        self.denied: set[str] = set()
        self.subscribed: set[str] = set()
        self.deferred: set[str] = set()
        self.ready = False  # the first answer (data channels) is in: media m-lines may follow

    def subscribe(self, track_sid: str, allowed: bool) -> Step:
        if track_sid in self.subscribed:
            return Step.NOTHING
        self.wanted.add(track_sid)
        if not allowed:
            if track_sid in self.denied:
                return Step.NOTHING
            self.denied.add(track_sid)
            return Step.TELL_DENIED
        if not self.ready:
            self.deferred.add(track_sid)
            return Step.DEFERRED
        self.subscribed.add(track_sid)
        return Step.ADD_LEG

    def unsubscribe(self, track_sid: str, keep_wanted: bool = False) -> bool:
        """True if the track was subscribed (its leg must go)."""
        if not keep_wanted:
            self.wanted.discard(track_sid)
            self.denied.discard(track_sid)
        if track_sid not in self.subscribed:
            return False
        self.subscribed.discard(track_sid)
        return True

    def revoke(self, track_sid: str) -> bool:
        """The publisher no longer allows a subscribed track: True if it was subscribed (its leg
        goes and the client is told); it stays wanted, as denied."""
        if track_sid not in self.subscribed:
            return False
        self.subscribed.discard(track_sid)
        self.denied.add(track_sid)
        return True

    def restore(self, track_sid: str) -> bool:
        """The publisher allows a denied track again: True if it was denied (the client is told
        and it is subscribed again)."""
        if track_sid not in self.denied:
            return False
        self.denied.discard(track_sid)
        return True

    def mark_ready(self) -> set[str]:
        """The first answer is in: the deferred subscriptions, to subscribe now."""
        self.ready = True
        deferred, self.deferred = self.deferred, set()
        return deferred


def permission_allows(rules: rtc.SubscriptionPermission | None, subscriber_sid: str, subscriber_identity: str,
                      track_sid: str) -> bool:
    """A publisher's subscription permission, as LiveKit reads it: no rules or all participants
    allow everyone; otherwise the first rule naming the subscriber (by sid or identity) decides."""
    if rules is None or rules.all_participants:
        return True
    for rule in rules.track_permissions:
        if rule.participant_sid == subscriber_sid or (
                rule.participant_identity and rule.participant_identity == subscriber_identity):
            return rule.all_tracks or track_sid in rule.track_sids
    return False
