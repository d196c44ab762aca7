from __future__ import annotations

import ipaddress

import pytest

from meshrtc.lab.topology import (
    LabPlanError,
    parse_delay_spec,
    parse_duration_ms,
    parse_percent,
    plan_lab,
)


def test_three_dcs_get_a_namespace_each_and_a_link_per_pair_with_the_default_delays() -> None:
    plan = plan_lab(3)
    assert plan.datacenters == ("dc1", "dc2", "dc3")
    assert [plan.namespace(dc) for dc in plan.datacenters] == ["meshrtc-dc1", "meshrtc-dc2", "meshrtc-dc3"]
    assert {link.name: link.delay_ms for link in plan.links} == {"dc1-dc2": 30, "dc1-dc3": 20, "dc2-dc3": 20}
    assert plan.hub == "dc1"


def test_the_direct_dc1_dc2_path_is_slower_than_no_path_but_faster_than_the_detour() -> None:
    plan = plan_lab(3)
    direct = plan.link("dc1", "dc2").delay_ms
    detour = plan.link("dc1", "dc3").delay_ms + plan.link("dc3", "dc2").delay_ms
    assert direct < detour == 40


def test_link_ends_are_named_after_the_peer_and_share_a_private_slash_30() -> None:
    plan = plan_lab(3, slot=7)
    link = plan.link("dc2", "dc1")  # either order
    assert (link.a.dc, link.a.device, link.a.namespace) == ("dc1", "to-dc2", "meshrtc-dc1")
    assert (link.b.dc, link.b.device, link.b.namespace) == ("dc2", "to-dc1", "meshrtc-dc2")
    net_a = ipaddress.ip_interface(f"{link.a.ip}/30").network
    assert net_a == ipaddress.ip_interface(f"{link.b.ip}/30").network
    assert net_a.subnet_of(ipaddress.ip_network("198.19.7.0/24"))


def test_every_address_in_a_lab_is_unique_and_management_lives_in_its_slot() -> None:
    plan = plan_lab(9, slot=3)
    ips = [end.ip for link in plan.links for end in (link.a, link.b)]
    ips += [ip for m in plan.management for ip in (m.root.ip, m.dc_end.ip)]
    assert len(ips) == len(set(ips)) == 2 * 36 + 2 * 9
    for mgmt in plan.management:
        assert ipaddress.ip_address(mgmt.dc_end.ip) in ipaddress.ip_network("198.18.3.0/24")
        assert mgmt.root.namespace is None and len(mgmt.root.device) <= 15
    assert plan.url("dc2") == f"ws://{plan.mgmt('dc2').dc_end.ip}:7880"


def test_two_slots_never_share_a_root_device_or_a_management_subnet() -> None:
    one, two = plan_lab(3, slot=0, name="a"), plan_lab(3, slot=1, name="b")
    assert not {m.root.device for m in one.management} & {m.root.device for m in two.management}
    assert not {m.root.ip for m in one.management} & {m.root.ip for m in two.management}


def test_links_of_a_dc_and_the_other_end() -> None:
    plan = plan_lab(3)
    assert sorted(link.other("dc2").dc for link in plan.links_of("dc2")) == ["dc1", "dc3"]


def test_delay_overrides_apply_in_either_order() -> None:
    plan = plan_lab(3, delays_ms={("dc2", "dc1"): 45})
    assert plan.link("dc1", "dc2").delay_ms == 45
    assert plan.link("dc1", "dc3").delay_ms == 20


@pytest.mark.parametrize("kwargs, message", [
    ({"datacenters": 1}, "2 to 9"),
    ({"datacenters": 10}, "2 to 9"),
    ({"datacenters": 3, "slot": 256}, "slot"),
    ({"datacenters": 3, "name": "Bad_Name"}, "lab name"),
    ({"datacenters": 2, "delays_ms": {("dc1", "dc3"): 5}}, "unknown datacenter"),
])
def test_bad_plans_are_refused_with_a_reason(kwargs: dict, message: str) -> None:
    with pytest.raises(LabPlanError, match=message):
        plan_lab(**kwargs)


def test_unknown_datacenters_and_self_links_are_refused() -> None:
    plan = plan_lab(3)
    with pytest.raises(LabPlanError, match="unknown datacenter 'dc4'"):
        plan.link("dc1", "dc4")
    with pytest.raises(LabPlanError, match="two different"):
        plan.link("dc1", "dc1")


def test_parsing_operator_input() -> None:
    assert parse_duration_ms("30ms") == 30
    assert parse_duration_ms("1s") == 1000
    assert parse_duration_ms("12") == 12
    assert parse_percent("30%") == 30.0
    assert parse_percent("2.5") == 2.5
    assert parse_delay_spec("dc2-dc1=80ms") == (("dc1", "dc2"), 80)
    for bad in ("fast", "-3ms", "2m"):
        with pytest.raises(LabPlanError):
            parse_duration_ms(bad)
    with pytest.raises(LabPlanError):
        parse_percent("130%")
    with pytest.raises(LabPlanError):
        parse_delay_spec("dc1=30ms")
