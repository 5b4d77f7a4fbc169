"""The simulator checked against reality (issue 18): a scenario file run both in the
simulator and as real daemons in network namespaces with ``tbf`` on the links.

Each scenario file under ``tests/data/fleets/reality-*.toml`` is read with the
simulator's own parser and

1. run in the simulator (``sim._fleetfile.simulate``): the completion time is the
   last node's convergence, counted from the ``distribute`` action;
2. built for real: one network namespace per node on a bridge (``tests/_netns.py``),
   a daemon in each (``ip netns exec ... python -m agent._cli daemon``, default
   gossip and swarm settings, as the simulator's machines have), real mDNS. Each link
   class becomes, on every member's veth, a ``tbf`` per direction: the veth's root is
   an ``htb`` qdisc whose classes (10 Gbit/s: they only sort) hold one ``tbf`` per
   class the node is on (its rate the class's ``up_mbit`` on the namespace side,
   ``down_mbit`` on the bridge side), ``u32`` filters sort packets into them by the
   peer's address, and everything else (mDNS, ARP) goes unshaped (this kernel has no
   ``prio``). So, as in the simulator, a node has its own interface per class. The
   package is ``make_package`` of the sizes the file declares (checked);
   the origin (node 0, the one holding the operator key) publishes it through the
   control client, then the clock starts, ``distribute_model`` is sent, and every
   node's own control socket is polled (every 0.1 s) until its record shows the model
   operational at that version;
3. the two completion times must agree within 25 %; both are printed (``pytest -s``)
   and appended to ``reality.txt`` in the test's temporary directory.

``tbf`` parameters: ``burst 32kbit`` (4,000 B: above one 1,514 B Ethernet frame, so
the rate holds from the first packet; NOTES.md measured 7.65 Mbit/s through
``rate 8mbit`` with it) and ``latency 400ms`` (the queue a tbf keeps before it drops:
400 ms at the class rate, 100 KB at 2 Mbit/s; where several TCP flows meet on one
2 Mbit/s class it still fills and drops some packets, see docs/JOURNAL.md 2026-12-06;
50 ms and 100 ms were slower, 2 s too).
The kernel has no netem, so the files give the veths' own latency (0.1 ms) and no loss,
and ``header_bytes = 66``: the Ethernet, IPv4 and TCP headers a tbf counts per 1,448 B.

Skipped, with the reason, where namespaces or qdiscs cannot be made (not root, no
``ip``/``tc``, a kernel without tbf/htb/u32).
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from agent._demo.fleet import make_package
from protocol import ModelOperationalStatus
from sim._fleetfile import load, simulate
from sim._fleetspec import FleetFile

from ._netns import NamespaceFleet, Segment, why_not

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parent / "data" / "fleets"
TOLERANCE = 0.25
TBF = ("burst", "32kbit", "latency", "400ms")
POLL = 0.1
CONFIG_JSON = 15                           # make_package's config.json per variant


class Unavailable(Exception):
    """Namespaces or qdiscs cannot be made here (the reason)."""


@dataclass(frozen=True)
class Plan:
    """What the test needs of a scenario file: nodes, pair classes, model, action times."""

    ff: FleetFile
    names: list[str]
    classes: dict[tuple[int, int], str]      # (i, j) -> link class name, both orders
    model: str
    version: str
    size: int                                # the file's largest variant (fp16-gpu)
    cpu_size: int                            # the variant nodes without a GPU take
    distribute_at: float


def _plan(path: Path) -> Plan:
    ff = load(path)
    names = ff.node_names()
    members: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        members.setdefault(name.rsplit("-", 1)[0], []).append(i)
    classes: dict[tuple[int, int], str] = {}
    for lk in ff.links:                    # file order: a later link wins, as in sim/
        pairs = [(a, b) for f in lk.within for a in members[f] for b in members[f] if a != b]
        pairs += [(a, b) for fa, fb in lk.between for a in members[fa] for b in members[fb]]
        for a, b in pairs:
            classes[(a, b)] = classes[(b, a)] = lk.link.name
    assert len(classes) == len(names) * (len(names) - 1), "every pair must be joined"
    (spec,) = ff.models
    assert spec.origin == names[0], "the origin is node 0 (it holds the operator key)"
    assert len(spec.versions) == 1
    publish, distribute = sorted(ff.actions, key=lambda a: a.at)
    assert (publish.do, distribute.do) == ("publish", "distribute")
    assert publish.node == distribute.node == spec.origin and publish.at == distribute.at
    sizes = {v.variant_id: v.size for v in spec.variants}
    return Plan(ff, names, classes, spec.model_id, spec.versions[0].version,
                sizes["fp16-gpu"], sizes["int8-cpu"], distribute.at)


def _simulated(plan: Plan) -> tuple[float, dict[str, float]]:
    """(completion, per-node convergence) in seconds after the distribute action."""
    result = simulate(plan.ff)
    assert result["converged"], result
    per_node = {row["node"]: row["converged_at"] - plan.distribute_at
                for f in result["formations"].values() for row in f["node_rows"]}
    return max(per_node.values()), per_node


def _shape_host(seg: Segment, plan: Plan, i: int) -> None:
    links = {lk.link.name: lk.link for lk in plan.ff.links}
    mine = sorted({cls for (a, _), cls in plan.classes.items() if a == i})
    for dev, ns, match, up in ((seg.inner(i), seg.ns(i), "dst", True),
                               (seg.outer(i), None, "src", False)):
        seg.run("tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb",
                "default", "99", ns=ns)
        for k, cls in [(k, c) for k, c in enumerate(mine)] + [(98, "")]:
            # an htb class far above the link's rate only sorts; its tbf leaf shapes
            seg.run("tc", "class", "add", "dev", dev, "parent", "1:", "classid",
                    f"1:{k + 1}", "htb", "rate", "10gbit", "quantum", "60000", ns=ns)
            if cls:
                rate = links[cls].up if up else links[cls].down       # bytes/s
                kbit = f"{round(rate * 8 / 1000)}kbit"
                seg.run("tc", "qdisc", "add", "dev", dev, "parent", f"1:{k + 1}",
                        "handle", f"{10 + k}:", "tbf", "rate", kbit, *TBF, ns=ns)
        for j in range(len(plan.names)):
            if j != i:
                band = mine.index(plan.classes[(i, j)]) + 1
                seg.run("tc", "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip",
                        "prio", "1", "u32", "match", "ip", match, f"{seg.addr(j)}/32",
                        "flowid", f"1:{band}", ns=ns)


def _real(plan: Plan, base: Path, tag: str, subnet: str) -> tuple[float, dict[str, float]]:
    """The same rollout with real daemons; (completion, per-node) after distribute."""
    n = len(plan.names)
    seg = Segment(n, tag, subnet)
    seg.teardown()                         # leftovers of a killed run with the same pid
    try:
        seg.setup(lambda i: _shape_host(seg, plan, i))
    except (subprocess.CalledProcessError, OSError) as exc:
        seg.teardown()
        detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else exc
        raise Unavailable(f"cannot create namespaces with tbf/htb/u32 here: {detail}") from exc
    try:
        qdiscs = seg.run("tc", "qdisc", "show", "dev", seg.inner(0), ns=seg.ns(0)).stdout
        assert "tbf" in qdiscs and "htb" in qdiscs, qdiscs
        # model.bin of size - 15 B and config.json (15 B) per variant; checked just below
        pkg = make_package(base / "pkg", plan.size - CONFIG_JSON, seed=7)
        for variant, size in (("fp16-gpu", plan.size), ("int8-cpu", plan.cpu_size)):
            real = sum(p.stat().st_size for p in (pkg / variant).iterdir())
            assert real == size, f"{variant}: the file says {size} B, the package has {real}"
        fleet = NamespaceFleet(base / "fleet", seg, "")
        with fleet.running(timeout=40):
            return trio.run(_rollout, fleet, plan, pkg)
    finally:
        seg.teardown()


async def _rollout(fleet: NamespaceFleet, plan: Plan, pkg: Path
                   ) -> tuple[float, dict[str, float]]:
    n = len(plan.names)
    await fleet.call(0, lambda c: c.publish(str(pkg), plan.model, plan.version))
    t0 = time.monotonic()
    await fleet.call(0, lambda c: c.distribute_model(plan.model, plan.version))
    done: dict[str, float] = {}
    with trio.fail_after(120):
        while len(done) < n:
            for i in range(n):
                if plan.names[i] in done:
                    continue
                rec = (await fleet.call(i, lambda c: c.node_model_status())).record
                st = rec.model(plan.model) if rec is not None else None
                if (st is not None and st.version == plan.version
                        and st.status == ModelOperationalStatus.OPERATIONAL):
                    done[plan.names[i]] = time.monotonic() - t0
            await trio.sleep(POLL)
    return max(done.values()), done


def measure(name: str, tag: str, subnet: str, base: Path) -> tuple[str, float, float]:
    """Run scenario file ``name`` both ways: (report, simulated, real completion in s).
    Raises :class:`Unavailable` where the real half cannot run."""
    reason = why_not(need_tc=True)
    if reason is not None:
        raise Unavailable(reason)
    plan = _plan(DATA / name)
    t_sim, sim_nodes = _simulated(plan)
    t_real, real_nodes = _real(plan, base, tag, subnet)
    lines = [f"reality/{plan.ff.name}: sim {t_sim:.2f} s, real {t_real:.2f} s, "
             f"real/sim {t_real / t_sim:.3f} (tolerance +-{TOLERANCE:.0%})"]
    for node in plan.names:
        lines.append(f"  {node}: sim {sim_nodes[node]:.2f} s, real {real_nodes[node]:.2f} s")
    return "\n".join(lines), t_sim, t_real


def _compare(name: str, tag: str, subnet: str, tmp_path: Path) -> None:
    try:
        text, t_sim, t_real = measure(name, tag, subnet, tmp_path)
    except Unavailable as exc:
        pytest.skip(str(exc))
    print(text, flush=True)
    with open(tmp_path / "reality.txt", "a") as f:
        f.write(text + "\n")
    assert abs(t_real - t_sim) <= TOLERANCE * t_sim, text


def test_a_single_shaped_pair_agrees_with_the_simulator(tmp_path: Path) -> None:
    _compare("reality-pair.toml", "rp", "10.213.31", tmp_path)


def test_four_nodes_on_two_link_classes_agree_with_the_simulator(tmp_path: Path) -> None:
    _compare("reality-4.toml", "r4", "10.213.34", tmp_path)
