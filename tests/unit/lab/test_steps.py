from __future__ import annotations

from meshrtc.lab.steps import (
    Run,
    Sysctl,
    link_address_steps,
    link_state_steps,
    management_steps,
    namespace_steps,
    netem_steps,
    teardown_steps,
    veth_link_steps,
)
from meshrtc.lab.topology import plan_lab


def _text(steps: list) -> list[str]:
    return [str(step) for step in steps]


def test_namespaces_have_loopback_up_and_never_forward() -> None:
    steps = namespace_steps(plan_lab(2))
    assert Run(("ip", "netns", "add", "meshrtc-dc1")) in steps
    assert Run(("ip", "-n", "meshrtc-dc2", "link", "set", "dev", "lo", "up")) in steps
    assert Sysctl("meshrtc-dc1", "net.ipv4.ip_forward", "0") in steps


def test_veth_links_get_netem_delay_on_both_ends() -> None:
    text = _text(veth_link_steps(plan_lab(3)))
    assert "ip link add name to-dc2 netns meshrtc-dc1 type veth peer name to-dc1 netns meshrtc-dc2" in text
    assert "tc -n meshrtc-dc1 qdisc replace dev to-dc2 root netem delay 30ms" in text
    assert "tc -n meshrtc-dc2 qdisc replace dev to-dc1 root netem delay 30ms" in text


def test_unshaped_veth_links_have_no_qdisc() -> None:
    text = _text(veth_link_steps(plan_lab(3), shaped=False))
    assert "ip link add name to-dc2 netns meshrtc-dc1 type veth peer name to-dc1 netns meshrtc-dc2" in text
    assert not [line for line in text if line.startswith("tc ")]


def test_link_addresses_and_management_links() -> None:
    plan = plan_lab(2, slot=4)
    text = _text(link_address_steps(plan) + management_steps(plan))
    link = plan.link("dc1", "dc2")
    assert f"ip -n meshrtc-dc1 addr add {link.a.ip}/30 dev to-dc2" in text
    assert "ip -n meshrtc-dc2 link set dev to-dc1 up" in text
    assert "ip link add name mlab4-dc1 type veth peer name mgmt netns meshrtc-dc1" in text
    # the root side of every management link refuses to forward: no path between DCs through it
    assert "sysctl -w net.ipv4.conf.mlab4-dc2.forwarding=0" in text


def test_cut_and_degrade_touch_both_ends_of_one_link_only() -> None:
    link = plan_lab(3).link("dc1", "dc2")
    assert _text(link_state_steps(link, up=False)) == [
        "ip -n meshrtc-dc1 link set dev to-dc2 down", "ip -n meshrtc-dc2 link set dev to-dc1 down"]
    assert _text(netem_steps(link, 80, 30.0)) == [
        "tc -n meshrtc-dc1 qdisc replace dev to-dc2 root netem delay 80ms loss 30%",
        "tc -n meshrtc-dc2 qdisc replace dev to-dc1 root netem delay 80ms loss 30%"]


def test_teardown_removes_namespaces_and_root_devices() -> None:
    text = _text(teardown_steps(plan_lab(2, slot=1)))
    assert text == ["ip netns del meshrtc-dc1", "ip netns del meshrtc-dc2",
                    "ip link del dev mlab1-dc1", "ip link del dev mlab1-dc2"]
