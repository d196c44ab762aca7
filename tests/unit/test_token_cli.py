"""`meshrtc token create`, checked with livekit-api's verifier."""

from __future__ import annotations

import json
from datetime import timedelta

import jwt
import pytest
from livekit import api as lk

from meshrtc import cli
from meshrtc.commands.token import UsageError, parse_duration

# livekit-api's verifier warns about LiveKit's customary short dev secrets; that is not under test.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the command under test: other subcommands may be mid-development in this tree.
    monkeypatch.setattr(cli, "COMMANDS", ["token"])
    for name in ("MESHRTC_API_KEY", "MESHRTC_API_SECRET", "MESHRTC_API_KEYS"):
        monkeypatch.delenv(name, raising=False)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["token", "create", *args])
    out, err = capsys.readouterr()
    return code, out.strip(), err.strip()


def test_default_is_a_join_token_signed_with_the_dev_key(capsys: pytest.CaptureFixture[str]) -> None:
    code, token, err = run(capsys, "--room", "R", "--identity", "I")
    assert code == 0 and err == ""

    claims = lk.TokenVerifier("devkey", "secret").verify(token)

    assert claims.identity == "I"
    assert claims.video is not None
    assert claims.video.room_join is True and claims.video.room == "R"
    assert (claims.video.can_publish, claims.video.can_subscribe, claims.video.can_publish_data) == (
        True, True, True)
    assert not claims.video.room_admin and not claims.video.room_create


def test_grant_flags(capsys: pytest.CaptureFixture[str]) -> None:
    code, token, _ = run(
        capsys, "--room", "R", "--identity", "I", "--name", "Ann", "--metadata", "m",
        "--attribute", "team=blue", "--kind", "agent", "--join", "--admin", "--create", "--list",
        "--deny-subscribe", "--deny-publish-data", "--can-update-metadata", "--hidden",
        "--publish-sources", "camera,microphone",
        "--api-key", "K", "--api-secret", "S",
    )
    assert code == 0

    claims = lk.TokenVerifier("K", "S").verify(token)

    assert (claims.name, claims.metadata, claims.kind) == ("Ann", "m", "agent")
    assert claims.attributes == {"team": "blue"}
    video = claims.video
    assert video is not None
    assert video.room_join and video.room_admin and video.room_create and video.room_list
    assert video.can_publish is True and video.can_subscribe is False and video.can_publish_data is False
    assert video.can_update_own_metadata is True and video.hidden is True
    assert video.can_publish_sources == ["camera", "microphone"]


def test_deny_publish_also_denies_data(capsys: pytest.CaptureFixture[str]) -> None:
    code, token, _ = run(capsys, "--room", "R", "--identity", "I", "--deny-publish")
    assert code == 0
    video = lk.TokenVerifier("devkey", "secret").verify(token).video
    assert video is not None and video.can_publish is False and video.can_publish_data is False


def test_admin_only_token_has_no_join(capsys: pytest.CaptureFixture[str]) -> None:
    code, token, _ = run(capsys, "--room", "R", "--admin")
    assert code == 0
    video = lk.TokenVerifier("devkey", "secret").verify(token).video
    assert video is not None and video.room_admin is True and not video.room_join


def test_valid_for_sets_exp(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--room", "R", "--identity", "I", "--valid-for", "90m", "--json")
    assert code == 0
    result = json.loads(out)
    assert (result["identity"], result["room"]) == ("I", "R")

    lk.TokenVerifier("devkey", "secret").verify(result["token"])
    payload = jwt.decode(result["token"], "secret", algorithms=["HS256"])
    assert payload["exp"] - payload["nbf"] == 90 * 60
    assert result["expires"] == payload["exp"]


def test_bad_duration_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--room", "R", "--identity", "I", "--valid-for", "soon")
    assert code == 2 and out == ""
    assert "--valid-for" in err and "soon" in err and "\n" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--room", "R"], "--identity"),
        (["--identity", "I"], "--room"),
        (["--admin"], "--room"),
        (["--room", "R", "--identity", "I", "--publish-sources", "camera,webcam"], "webcam"),
        (["--room", "R", "--identity", "I", "--allow-publish", "--deny-publish"], "contradict"),
        (["--room", "R", "--identity", "I", "--attribute", "novalue"], "KEY=VALUE"),
        (["--room", "R", "--identity", "I", "--api-secret", "S"], "--api-key"),
        (["--room", "R", "--identity", "I", "--api-key", "unknown"], "unknown"),
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    code, out, err = run(capsys, *args)
    assert code == 2 and out == ""
    assert err.startswith("meshrtc token create: ") and message in err


def test_credentials_from_api_keys(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESHRTC_API_KEYS", "first:s1,second:s2")
    _, token, _ = run(capsys, "--room", "R", "--identity", "I")
    assert lk.TokenVerifier("first", "s1").verify(token).identity == "I"

    _, token, _ = run(capsys, "--room", "R", "--identity", "I", "--api-key", "second")
    assert lk.TokenVerifier("second", "s2").verify(token).identity == "I"


def test_credentials_from_api_key_pair(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESHRTC_API_KEYS", "first:s1")
    monkeypatch.setenv("MESHRTC_API_KEY", "mine")
    monkeypatch.setenv("MESHRTC_API_SECRET", "my-secret")
    _, token, _ = run(capsys, "--room", "R", "--identity", "I")
    assert lk.TokenVerifier("mine", "my-secret").verify(token).identity == "I"


def test_token_without_subcommand_shows_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["token"]) == 2
    assert "create" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90m", 5400), ("24h", 86400), ("3600s", 3600), ("1h30m", 5400), ("2d", 172800), ("45", 45),
     ("1.5h", 5400)],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "0s", "h", "5x", "-5m", "1h 30m"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_duration(text)
