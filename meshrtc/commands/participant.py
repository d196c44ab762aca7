"""`meshrtc participant list|remove|mute`: participants through the RoomService API (`livekit-api`).

Connection options, credentials and errors as `meshrtc room` (see meshrtc/commands/room.py).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from meshrtc.commands.room import (
    add_connection_options,
    not_found_message,
    print_json,
    print_table,
    run_api,
    to_dict,
    when,
)


def _track_summary(track: Any) -> str:
    from livekit.protocol import models

    kind = models.TrackType.Name(track.type).lower()
    flags = [kind] + (["muted"] if track.muted else [])
    return f"{track.sid}({','.join(flags)})"


def _list(args: argparse.Namespace) -> int:
    async def call(client: Any) -> int:
        from livekit import api
        from livekit.protocol import models

        response = await client.room.list_participants(api.ListParticipantsRequest(room=args.room))
        participants = list(response.participants)
        if args.json:
            print_json([to_dict(p) for p in participants])
        elif not participants:
            print(f"nobody in room {args.room}")
        else:
            print_table(["IDENTITY", "SID", "STATE", "TRACKS", "JOINED"],
                        [[p.identity, p.sid, models.ParticipantInfo.State.Name(p.state),
                          " ".join(_track_summary(t) for t in p.tracks) or "-", when(p.joined_at)]
                         for p in participants])
        return 0

    return run_api(args, call, lambda msg: not_found_message(msg, args.room))


def _remove(args: argparse.Namespace) -> int:
    async def call(client: Any) -> int:
        from livekit import api

        await client.room.remove_participant(api.RoomParticipantIdentity(room=args.room, identity=args.identity))
        if args.json:
            print_json({"removed": args.identity, "room": args.room})
        else:
            print(f"removed {args.identity} from room {args.room}")
        return 0

    return run_api(args, call, lambda msg: not_found_message(msg, args.room, args.identity))


def _mute(args: argparse.Namespace) -> int:
    async def call(client: Any) -> int:
        from livekit import api

        response = await client.room.mute_published_track(api.MuteRoomTrackRequest(
            room=args.room, identity=args.identity, track_sid=args.track_sid, muted=not args.unmute))
        if args.json:
            print_json(to_dict(response.track))
        else:
            state = "muted" if response.track.muted else "unmuted"
            print(f"{state} track {response.track.sid or args.track_sid} of {args.identity} in room {args.room}")
        return 0

    return run_api(args, call, lambda msg: not_found_message(msg, args.room, args.identity, args.track_sid))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("participant", help="list, remove and mute participants (RoomService API)")
    actions = parser.add_subparsers(dest="participant_command", metavar="SUBCOMMAND")

    def show_help(_: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    parser.set_defaults(func=show_help)

    listing = actions.add_parser("list", help="list the participants of a room")
    listing.add_argument("room", metavar="ROOM")
    add_connection_options(listing)
    listing.set_defaults(func=_list)

    remove = actions.add_parser("remove", help="disconnect a participant from a room")
    remove.add_argument("room", metavar="ROOM")
    remove.add_argument("identity", metavar="IDENTITY")
    add_connection_options(remove)
    remove.set_defaults(func=_remove)

    mute = actions.add_parser("mute", help="mute (or with --unmute, unmute) a published track")
    mute.add_argument("room", metavar="ROOM")
    mute.add_argument("identity", metavar="IDENTITY")
    mute.add_argument("track_sid", metavar="TRACK_SID")
    mute.add_argument("--unmute", action="store_true", help="unmute instead")
    add_connection_options(mute)
    mute.set_defaults(func=_mute)
