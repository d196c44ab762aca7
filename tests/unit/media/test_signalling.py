"""The signalling dispatch table: every request kind is handled or ignored on purpose."""

from __future__ import annotations

import pytest
from livekit.protocol import rtc

from services.media.session import REQUEST_HANDLERS, Session
from services.media.signalling import IGNORED, SignalDispatch, request_kinds


def test_every_request_kind_of_the_protocol_is_handled_or_ignored_with_a_reason() -> None:
    handled, ignored, kinds = set(REQUEST_HANDLERS), set(IGNORED), set(request_kinds())
    assert not handled & ignored
    assert handled | ignored == kinds, f"undecided: {sorted(kinds - handled - ignored)}; " \
                                       f"not in the protocol: {sorted((handled | ignored) - kinds)}"
    assert all(reason.strip() for reason in IGNORED.values())
    for name in REQUEST_HANDLERS.values():
        assert callable(getattr(Session, name)), name


async def test_frames_reach_their_handler_and_garbage_or_ignored_kinds_do_not() -> None:
    seen: list[rtc.SignalRequest] = []

    async def on_leave(request: rtc.SignalRequest) -> None:
        seen.append(request)

    dispatch = SignalDispatch({"leave": on_leave})
    leave = rtc.SignalRequest(leave=rtc.LeaveRequest(reason=1))
    assert await dispatch.dispatch(leave.SerializeToString()) == "leave"
    assert seen == [leave]
    assert await dispatch.dispatch(b"\xff\xff\xff garbage") is None
    assert await dispatch.dispatch(rtc.SignalRequest(ping=5).SerializeToString()) is None
    assert await dispatch.dispatch(b"") is None  # no kind at all
    assert len(seen) == 1


def test_a_kind_cannot_be_both_handled_and_ignored() -> None:
    async def handler(request: rtc.SignalRequest) -> None:
        return None

    with pytest.raises(ValueError, match="ping"):
        SignalDispatch({"ping": handler})
