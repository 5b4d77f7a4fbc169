"""The simulator's event loop and network model, driven with trivial endpoints."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim._loop import EventLoop, derive_rng
from sim._network import LinkProfile, Network

MB = 1_000_000


NO_LATENCY = LinkProfile(latency=0.0)


def make_net(profile: LinkProfile = NO_LATENCY, seed: int = 1,
             nodes: tuple[str, ...] = ("a", "b", "c"), rate: float = MB
             ) -> tuple[EventLoop, Network, list[tuple[float, str, str, object]]]:
    loop = EventLoop()
    got: list[tuple[float, str, str, object]] = []
    net = Network(loop, derive_rng(seed, "net"), profile,
                  deliver=lambda dst, src, msg: got.append((loop.now, dst, src, msg)))
    for n in nodes:
        net.add_node(n, up=rate, down=rate)
    return loop, net, got


def test_one_megabyte_over_one_megabyte_per_second_takes_one_second() -> None:
    loop, net, got = make_net()
    net.send("a", "b", "m", MB)
    loop.run()
    assert len(got) == 1
    assert got[0][0] == pytest.approx(1.0)


def test_latency_is_added_once() -> None:
    loop, net, got = make_net(LinkProfile(latency=0.25))
    net.send("a", "b", "m", MB)
    net.send("a", "b", "small", 100)
    loop.run()
    # the small message bypasses the bulk queue but keeps per-connection order
    assert [m for *_, m in got] == ["m", "small"]
    assert got[0][0] == pytest.approx(1.25)


def test_uplink_is_shared_by_concurrent_transfers() -> None:
    loop, net, got = make_net()
    net.send("a", "b", "to-b", MB)
    net.send("a", "c", "to-c", MB)
    loop.run()
    times = sorted(t for t, *_ in got)
    assert times == pytest.approx([1.0, 2.0])  # FIFO: the pair needs 2 s of a's uplink


def test_downlink_is_shared_by_concurrent_senders() -> None:
    loop, net, got = make_net()
    net.send("a", "c", 1, MB)
    net.send("b", "c", 2, MB)
    loop.run()
    assert max(t for t, *_ in got) == pytest.approx(2.0)


def test_slow_uplink_bounds_a_fast_downlink() -> None:
    loop = EventLoop()
    got: list[float] = []
    net = Network(loop, derive_rng(0, "net"), LinkProfile(latency=0.0),
                  deliver=lambda d, s, m: got.append(loop.now))
    net.add_node("slow", up=MB / 4, down=MB)
    net.add_node("fast", up=MB, down=10 * MB)
    net.send("slow", "fast", "x", MB)
    loop.run()
    assert got == [pytest.approx(4.0)]


@pytest.mark.parametrize("loss", [0.0, 0.1, 0.5])
def test_loss_rate_is_close_to_configured(loss: float) -> None:
    loop, net, got = make_net(LinkProfile(latency=0.01, loss=loss), seed=7)
    n = 4000
    for i in range(n):
        net.send("a", "b", i, 10)
    loop.run()
    rate = 1 - len(got) / n
    assert abs(rate - loss) < 0.03
    assert net.statistics().lost == n - len(got)


def test_duplication_and_reordering() -> None:
    loop, net, got = make_net(LinkProfile(latency=0.01, duplicate=0.2, reorder=0.3,
                                          reorder_delay=0.5), seed=3)
    for i in range(1000):
        net.send("a", "b", i, 10)
    loop.run()
    values = [int(str(m)) for *_, m in got]
    assert len(values) > 1100  # duplicates arrived
    assert values != sorted(values)  # some overtook others
    assert set(values) == set(range(1000))


def test_in_order_without_reorder_even_with_jitter() -> None:
    loop, net, got = make_net(LinkProfile(latency=0.01, jitter=0.2), seed=3)
    for i in range(500):
        net.send("a", "b", i, 10 if i % 3 else 50_000)
    loop.run()
    assert [m for *_, m in got] == list(range(500))


def test_partition_blocks_and_heals() -> None:
    loop, net, got = make_net(LinkProfile(latency=0.1))
    net.split([{"a"}, {"b", "c"}])
    assert not net.reachable("a", "b")
    assert net.reachable("b", "c")
    assert net.send("a", "b", "blocked", 10) is False
    assert net.send("b", "c", "inside", 10) is True
    loop.run()
    assert [m for *_, m in got] == ["inside"]
    net.heal()
    net.send("a", "b", "after", 10)
    loop.run()
    assert [m for *_, m in got] == ["inside", "after"]


def test_message_in_flight_when_partition_starts_is_lost() -> None:
    loop, net, got = make_net(LinkProfile(latency=1.0))
    net.send("a", "b", "x", 10)
    loop.call_at(0.5, net.split, [{"a"}, {"b"}])
    loop.run()
    assert got == []
    assert net.statistics().blocked == 1


def test_crash_drops_in_flight_and_restart_resumes() -> None:
    loop, net, got = make_net()
    net.send("a", "b", "lost", MB)
    loop.call_at(0.5, net.crash, "b")
    loop.run()
    assert got == []
    net.restart("b")
    net.send("a", "b", "ok", 10)
    loop.run()
    assert [m for *_, m in got] == ["ok"]


@given(st.integers(min_value=0, max_value=2**32))
def test_same_seed_same_trace(seed: int) -> None:
    def trace(s: int) -> str:
        loop, net, _ = make_net(LinkProfile(latency=0.01, jitter=0.05, loss=0.2,
                                            duplicate=0.1, reorder=0.1), seed=s)
        net.deliver = lambda dst, src, m: loop.log("deliver", dst, src, m)
        for i in range(50):
            net.send("abc"[i % 3], "abc"[(i + 1) % 3], i, 10 + 1000 * i)
        loop.run()
        return loop.trace_digest()

    assert trace(seed) == trace(seed)
    assert trace(seed) != trace(seed + 1)


def test_loop_orders_ties_by_scheduling_order() -> None:
    loop = EventLoop()
    seen: list[int] = []
    for i in range(5):
        loop.call_at(1.0, seen.append, i)
    loop.call_at(0.5, seen.append, -1)
    loop.run(until=0.7)
    assert seen == [-1]
    assert loop.now == pytest.approx(0.7)
    loop.run()
    assert seen == [-1, 0, 1, 2, 3, 4]


# ---------------------------------------------------------------------- link classes


def test_a_link_class_has_its_own_rate_latency_and_queue() -> None:
    from sim._network import LinkClass

    loop, net, got = make_net()
    net.add_link_class(LinkClass("radio", up=MB / 4, down=MB / 4, latency=0.1))
    net.add_link_class(LinkClass("lan", up=MB, down=MB, latency=0.0))
    net.join("a", "b", "radio")
    net.join("a", "c", "lan")
    net.send("a", "b", "slow", MB)
    net.send("a", "c", "fast", MB)      # another interface: does not wait behind "slow"
    loop.run()
    at = {m: t for t, _, _, m in got}
    assert at["slow"] == pytest.approx(4.1)
    assert at["fast"] == pytest.approx(1.0)
    assert net.bytes_by_class == {"radio": MB, "lan": MB}
    assert net.latency("a", "b") == 0.1


def test_a_link_class_charges_packet_headers_on_the_wire() -> None:
    from sim._network import LinkClass

    tcp = LinkClass("tcp", up=MB, down=MB, latency=0.0, header_bytes=66, mss=1448)
    assert tcp.wire_bytes(1448) == 1514 and tcp.wire_bytes(1449) == 1449 + 132
    assert tcp.wire_bytes(10) == 76                    # a small message is one packet
    assert LinkClass("raw", up=MB, down=MB).wire_bytes(MB) == MB
    loop, net, got = make_net()
    net.add_link_class(tcp)
    net.join("a", "b", "tcp")
    size = 1448 * 1000
    net.send("a", "b", "bulk", size)
    loop.run()
    assert got[0][0] == pytest.approx(1514 * 1000 / MB)  # 4.6 % more than size / rate
    assert net.bytes_by_class == {"tcp": 1514 * 1000}


def test_unjoined_pairs_and_a_class_that_is_down_are_unreachable() -> None:
    from sim._network import LinkClass

    loop, net, got = make_net()
    net.add_link_class(LinkClass("sat", up=MB, down=MB, latency=0.3))
    net.join("a", "b", "sat")
    assert net.reachable("a", "b") and not net.reachable("a", "c")
    assert net.joined("a", "b") and not net.joined("b", "c")
    net.send("a", "b", "lost in flight", MB)
    loop.run(until=0.5)
    net.set_class_state("sat", False)
    assert not net.reachable("a", "b")
    assert net.send("a", "b", "refused", 10) is False
    loop.run()
    assert got == []
    net.set_class_state("sat", True)
    net.send("a", "b", "ok", 10)
    loop.run()
    assert [m for *_, m in got] == ["ok"]


def test_link_class_loss_drops_about_its_fraction() -> None:
    from sim._network import LinkClass

    loop, net, got = make_net()
    net.add_link_class(LinkClass("radio", up=MB, down=MB, latency=0.01, loss=0.2))
    net.join("a", "b", "radio")
    for i in range(2000):
        net.send("a", "b", i, 100)
    loop.run()
    assert 0.17 < 1 - len(got) / 2000 < 0.23
    assert net.statistics().lost == 2000 - len(got)
