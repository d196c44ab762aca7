"""`meshrtc lab`: the failover lab. N datacenters in network namespaces on one machine, joined
by links with emulated delay and loss, one full `meshrtc dev` in each; cut, heal, degrade and
partition links to rehearse failures. Root only. The logic lives in `meshrtc/lab/`."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from meshrtc.lab.state import DEFAULT_STATE_DIR, LabState, StateDir
from meshrtc.lab.topology import LabPlan


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("lab", help="failover lab: DCs in network namespaces with emulated links (root)")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                        help=f"where the lab keeps its state, keys and logs (default {DEFAULT_STATE_DIR})")
    lab_sub = parser.add_subparsers(dest="lab_command", metavar="ACTION", required=True)

    up = lab_sub.add_parser("up", help="create the namespaces and links, start one DC in each")
    up.add_argument("--datacenters", type=int, default=3)
    up.add_argument("--delay", action="append", default=[], metavar="dcA-dcB=DELAY",
                    help="one-way delay of a link, e.g. dc1-dc2=30ms (default 30/20/20 ms for dc1-dc2/dc1-dc3/dc2-dc3)")
    up.add_argument("--name", default="meshrtc", help="namespaces are NAME-dc1, NAME-dc2, … (default meshrtc)")
    up.add_argument("--slot", type=int, help="address slot 0-255 (default: the first free one)")
    up.add_argument("--emulator", choices=["auto", "netem", "wire", "veth"], default="auto",
                    help="link emulation: kernel tc netem, the userspace `wire`, or plain `veth` links without "
                         "delay or loss (default: netem if the kernel has it)")
    up.add_argument("--network-only", action="store_true", help="build the network, start no services")
    up.add_argument("--media-nodes", type=int, default=1, help="media processes per DC (default 1)")
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for every DC to be ready")
    up.add_argument("--dry-run", action="store_true", help="print the network commands, change nothing")

    for action, text in (("cut", "take a link down (both ends)"), ("heal", "bring a link back up")):
        cmd = lab_sub.add_parser(action, help=text)
        cmd.add_argument("a")
        cmd.add_argument("b")
    degrade = lab_sub.add_parser("degrade", help="change a link's loss and/or delay (each direction)")
    degrade.add_argument("a")
    degrade.add_argument("b")
    degrade.add_argument("--loss", help="packet loss, e.g. 30%%")
    degrade.add_argument("--delay", help="one-way delay, e.g. 80ms")
    partition = lab_sub.add_parser("partition", help="take all of a DC's inter-DC links down")
    partition.add_argument("dc")
    heal_dc = lab_sub.add_parser("unpartition", help="bring all of a DC's inter-DC links back up")
    heal_dc.add_argument("dc")
    status = lab_sub.add_parser("status", help="links, DC processes, leafnodes")
    status.add_argument("--json", action="store_true")
    down = lab_sub.add_parser("down", help="stop everything the lab started and remove it (idempotent)")
    down.add_argument("--name", default="meshrtc", help="with no state left: the lab name to clean up")
    down.add_argument("--slot", type=int, default=0, help="with no state left: the slot to clean up")
    ping = lab_sub.add_parser("ping", help="ICMP round trips from one DC to another over their direct link")
    ping.add_argument("a")
    ping.add_argument("b")
    ping.add_argument("--count", type=int, default=5)
    exec_ = lab_sub.add_parser("exec", help="run a command inside a DC's namespace: exec dc1 -- CMD…")
    exec_.add_argument("dc")
    exec_.add_argument("argv", nargs=argparse.REMAINDER)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meshrtc.lab import links, netns, runner, steps, topology
    from meshrtc.lab.state import LabStateError

    state_dir = StateDir(args.state_dir)
    try:
        if args.lab_command == "up" and args.dry_run:
            plan = topology.plan_lab(args.datacenters, name=args.name, slot=args.slot or 0,
                                     delays_ms=dict(topology.parse_delay_spec(s) for s in args.delay))
            for step in (steps.namespace_steps(plan) + steps.veth_link_steps(plan) + steps.link_address_steps(plan)
                         + steps.management_steps(plan)):
                print(step)
            return 0
        netns.require_root_and_ip()
        if args.lab_command == "up":
            return _up(args, state_dir)
        if args.lab_command == "down":
            runner.down(state_dir, None, name=args.name, slot=args.slot)
            print("lab: down")
            return 0
        state = state_dir.load()
        plan = state.plan()
        if args.lab_command == "cut":
            links.cut(plan, args.a, args.b)
        elif args.lab_command == "heal":
            links.heal(plan, args.a, args.b)
        elif args.lab_command == "partition":
            links.partition(plan, args.dc)
        elif args.lab_command == "unpartition":
            links.heal_all(plan, args.dc)
        elif args.lab_command == "degrade":
            if args.loss is None and args.delay is None:
                raise topology.LabPlanError("degrade needs --loss and/or --delay")
            shape = links.degrade(
                plan, state, state_dir, args.a, args.b,
                loss_percent=None if args.loss is None else topology.parse_percent(args.loss),
                delay_ms=None if args.delay is None else topology.parse_duration_ms(args.delay),
            )
            print(f"lab: {plan.link(args.a, args.b).name} delay {shape.delay_ms} ms, loss {shape.loss_percent:g}%")
            return 0
        elif args.lab_command == "status":
            return _status(args, plan, state, state_dir)
        elif args.lab_command == "ping":
            return _ping(plan, args.a, args.b, args.count)
        elif args.lab_command == "exec":
            argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            if not argv:
                raise topology.LabPlanError("exec needs a command: meshrtc lab exec dc1 -- CMD …")
            os.execvp("ip", netns.exec_argv(plan.namespace(args.dc), argv))
        print(f"lab: {args.lab_command} done")
        return 0
    except (topology.LabPlanError, LabStateError, netns.LabNetworkError, runner.LabError) as exc:
        print(f"meshrtc lab: {exc}", file=sys.stderr)
        return 1


def _up(args: argparse.Namespace, state_dir: StateDir) -> int:
    from meshrtc.lab import netns, runner, topology

    delays = dict(topology.parse_delay_spec(spec) for spec in args.delay)
    emulator = args.emulator
    if emulator == "auto":
        emulator = "netem" if netns.netem_available() else "wire"
    plan, state = runner.up(state_dir, args.datacenters, name=args.name, slot=args.slot, delays_ms=delays,
                            emulator=emulator, services=not args.network_only, media_nodes=args.media_nodes,
                            ready_timeout=args.timeout)
    print(f"lab {plan.name}: up (slot {plan.slot}, links emulated by {emulator}; state in {state_dir.path})")
    if state.services:
        from meshrtc.commands.dev import DEV_KEY, DEV_SECRET

        print(f"  API key {DEV_KEY}, secret {DEV_SECRET} (every DC)")
    for dc in plan.datacenters:
        print(f"  {dc}: namespace {plan.namespace(dc)}  URL {plan.url(dc)}  NATS {plan.nats_url(dc)}"
              + (f"  log {state_dir.log_file(dc)}" if state.services else ""))
    for link in plan.links:
        print(f"  link {link.name}: {link.a.ip} <-> {link.b.ip}, {link.delay_ms} ms each way")
    return 0


def _status(args: argparse.Namespace, plan: LabPlan, state: LabState, state_dir: StateDir) -> int:
    from meshrtc.lab import links, netns, runner

    link_rows = links.link_status(plan, state_dir)
    dcs: list[dict[str, Any]] = []  # one JSON object per DC
    for dc in plan.datacenters:
        pid = state.dc_pids.get(dc)
        dcs.append({
            "dc": dc, "namespace": plan.namespace(dc), "url": plan.url(dc), "pid": pid,
            "alive": netns.pid_alive(pid) if pid else False,
            "signal": runner.signal_answers(plan, dc) if state.services else None,
            "leafnodes": runner.leafnode_remotes(plan, dc) if state.services else None,
        })
    wire_alive = bool(state.wire_pid) and netns.pid_alive(state.wire_pid or 0)
    if args.json:
        print(json.dumps({"name": plan.name, "slot": plan.slot, "emulator": state.emulator,
                          "wire_alive": wire_alive if state.emulator == "wire" else None,
                          "links": [asdict(row) for row in link_rows], "datacenters": dcs}, indent=2))
        return 0
    wire_text = "" if state.emulator != "wire" else (", emulator alive" if wire_alive else
                                                     ", EMULATOR DEAD: every link is down")
    print(f"lab {plan.name} (slot {plan.slot}, {state.emulator}{wire_text})")
    for row in link_rows:
        counted = ""
        if row.frames:
            totals = {key: sum(d[key] for d in row.frames.values()) for key in ("passed", "lost", "overflowed")}
            counted = f"  frames {totals['passed']} passed, {totals['lost']} lost, {totals['overflowed']} overflowed"
        print(f"  link {row.name:<10} {row.state:<9} delay {row.delay_ms} ms  loss {row.loss_percent:g}%{counted}")
    if not state.services:
        print("  no services (built with --network-only)")
        return 0
    for info in dcs:
        leafs = info["leafnodes"]
        leaf_text = "-" if leafs is None else (",".join(leafs) or "none")
        print(f"  {info['dc']:<5} pid {info['pid']} {'alive' if info['alive'] else 'DEAD'}  "
              f"signal {'ok' if info['signal'] else 'no answer'}  leafnodes {leaf_text}  {info['url']}")
    return 0


def _ping(plan: LabPlan, a: str, b: str, count: int) -> int:
    from meshrtc.lab import netns

    target = plan.link(a, b).end_in(b).ip
    argv = netns.exec_argv(plan.namespace(a), [sys.executable, "-m", "meshrtc.lab.probe", target,
                                               "--count", str(count)])
    result = subprocess.run(argv, capture_output=True, text=True)
    if not result.stdout.strip():
        print(f"meshrtc lab: ping failed: {result.stderr.strip()}", file=sys.stderr)
        return 1
    data = json.loads(result.stdout)
    rtts = data["rtts_ms"]
    summary = f"min/avg/max {min(rtts):.1f}/{sum(rtts) / len(rtts):.1f}/{max(rtts):.1f} ms" if rtts else "no replies"
    error = f" ({data['error']})" if data["error"] else ""
    print(f"{a} -> {b} ({target}): {data['received']}/{data['sent']} replies, {summary}{error}")
    return 0 if data["received"] else 1
