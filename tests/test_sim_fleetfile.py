"""Scenario files (``shoal-sim run FLEET.toml``): strict parsing, replay, outages, blockers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sim.__main__ import main
from sim._fleetfile import FleetFileError, parse, simulate

SMALL = """
[run]
seed = 3
duration = "20m"
sample_every = "0.5s"

[[formation]]
name = "hq"
count = 1

[[formation]]
name = "field"
count = 3
[formation.hardware]
cpu_arch = "aarch64"
storage_free_mb = {storage}

[[link]]
name = "sat"
up_mbit = 2
latency_ms = 300
between = [["hq", "field"]]
{schedule}

[[link]]
name = "radio"
up_mbit = 4
latency_ms = 50
within = ["field"]

[[model]]
id = "m"
origin = "hq-0"
[[model.variant]]
id = "cpu"
size = "4M"
[[model.version]]
version = "1.0.0"

[[action]]
at = "2s"
node = "hq-0"
do = "publish"
model = "m"
version = "1.0.0"

[[action]]
at = "3s"
node = "hq-0"
do = "distribute"
model = "m"
version = "1.0.0"
"""


def small(storage: int = 100_000, schedule: str = "") -> str:
    return SMALL.format(storage=storage, schedule=schedule)


def last_converged(result: dict[str, object], formation: str) -> float:
    f = result["formations"][formation]  # type: ignore[index]
    assert f["converged"] == f["targeted"] > 0
    return float(f["last_converged_at"])


@pytest.mark.parametrize(("text", "key"), [
    ("[run]\nsede = 1\n", "run.sede: unknown key"),
    ("[[formation]]\nname = 'a'\ncount = 1\n[formation.hardware]\ngpu_memory_gb = 8\n",
     "formation[0].hardware.gpu_memory_gb: unknown key"),
    ("[[formation]]\nname = 'a'\ncount = 'two'\n", "formation[0].count: expected an integer"),
    ("[[formation]]\nname = 'a'\ncount = 1\n[[link]]\nname = 'x'\nup_mbit = 1\n"
     "within = ['b']\n", "link[0].within[0]: no formation 'b'"),
    ("[[formation]]\nname = 'a'\ncount = 1\n[[link]]\nname = 'x'\nup_mbit = 1\n"
     "within = ['a']\nloss = 0.9\n", "link[0].loss: 0.9 is outside"),
    ("[[formation]]\nname = 'a'\ncount = 1\n[[link]]\nname = 'x'\nup_mbit = 1\n"
     "between = [['a', 'a-1']]\n", "link[0].between[0]: no formation or node 'a-1'"),
    ("[[formation]]\nname = 'a'\ncount = 1\n[[link]]\nname = 'x'\nup_mbit = 1\n"
     "within = ['a']\nschedule = { every = '1h', up_for = '2h' }\n", "link[0].schedule"),
    ("[[formation]]\nname = 'a'\ncount = 1\n[[link]]\nname = 'x'\nup_mbit = 1\n"
     "within = ['a']\nheader_bytes = -1\n", "link[0].header_bytes: -1 is outside"),
    ("[[formation]]\nname = 'a'\ncount = 1\n[[link]]\nname = 'x'\nup_mbit = 1\n"
     "within = ['a']\nmss = 1.5\n", "link[0].mss: expected an integer"),
    ("[[formation]]\nname = 'a'\ncount = 1\n[[model]]\nid = 'm'\norigin = 'a-0'\n"
     "[[model.variant]]\nid = 'v'\nsize = '1M'\nrequirements = { gpu = 1 }\n"
     "[[model.version]]\nversion = '1.0.0'\n", "model[0].variant[0].requirements.gpu: unknown key"),
    ("[[formation]]\nname = 'a'\ncount = 1\n[[model]]\nid = 'm'\norigin = 'a-0'\n"
     "[[model.variant]]\nid = 'v'\nsize = '1M'\n[[model.version]]\nversion = '1.0.0'\n"
     "[[action]]\nat = '1m'\nnode = 'a-0'\ndo = 'deploy'\nmodel = 'm'\n",
     "action[0].do: 'deploy'"),
    ("[[formation]]\nname = 'a'\ncount = 1\n[[model]]\nid = 'm'\norigin = 'a-0'\n"
     "[[model.variant]]\nid = 'v'\nsize = '1M'\n[[model.version]]\nversion = '1.0.0'\n"
     "[[action]]\nat = '1m'\nnode = 'a-0'\ndo = 'distribute'\nmodel = 'm'\nversion = '1.0.0'\n"
     "scope = 'everywhere'\n", "action[0].scope"),
    ("[[formation]]\nname = 'a'\ncount = 1\n[[crash]]\nnode = 'a-7'\nat = '1m'\n",
     "crash[0].node: no node 'a-7'"),
    ("[[formation]]\nname = 'a'\ncount = 1\n[[crash]]\nnode = 'a-0'\nat = 'soon'\n",
     "crash[0].at: 'soon' is not a duration"),
    ("[[formation]]\nname = 'a'\ncount = 1\n[[formations]]\n", "formations: unknown key"),
    ("[[formation]]\nname = 'a'\ncount = 1\n[[model]]\nid = 'm'\norigin = 'a-0'\n"
     "[[model.variant]]\nid = 'v'\nsize = '1M'\n[[model.version]]\nversion = '1.0'\n",
     "model[0].version[0].version: invalid version"),
])
def test_a_bad_key_is_refused_by_its_dotted_name(text: str, key: str) -> None:
    with pytest.raises(FleetFileError, match=key.replace("[", r"\[").replace("(", r"\(")):
        parse(text)


def test_the_cli_refuses_a_bad_file_naming_the_key(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(small().replace('latency_ms = 300', 'latency_ms = 300\njitter = 5'))
    assert main(["run", str(path)]) == 2
    assert "link[0].jitter: unknown key" in capsys.readouterr().err


def test_a_seed_replays_the_same_trace_and_another_does_not(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    path = tmp_path / "small.toml"
    path.write_text(small())
    runs = []
    for seed in ("3", "3", "4"):
        assert main(["run", str(path), "--json", "--seed", seed]) == 0
        runs.append(json.loads(capsys.readouterr().out))
    assert runs[0]["trace"] == runs[1]["trace"] != runs[2]["trace"]
    for key in ("formations", "bytes_by_link", "actions", "sim_seconds"):
        assert runs[0][key] == runs[1][key]
    assert runs[0]["converged"] and runs[0]["stopped_early"]
    assert set(runs[0]["bytes_by_link"]) == {"sat", "radio"}
    assert runs[0]["bytes_by_link"]["sat"] > 4 * 1024 * 1024


def test_a_scheduled_outage_delays_convergence_by_about_the_outage() -> None:
    base = simulate(parse(small()))
    # the satellite is down for the first 120 s, then up for good
    late = simulate(parse(small(schedule="schedule = { every = '10h', up_for = '10h', "
                                          "offset = '120s' }")))
    t0, t1 = last_converged(base, "field"), last_converged(late, "field")
    # the order went out at 3 s: the outage left 117 s of it to wait out, plus the
    # sessions' re-dial once the link is back (13 s with seed 3)
    assert 117.0 <= t1 - t0 <= 117.0 + 20.0
    assert t0 < 60.0


def test_a_link_may_join_one_pair_of_nodes() -> None:
    """A 100 Mbit/s link from the ground station to field-2 alone: field-2 gets the
    model over it long before the others can over the 2 Mbit/s satellite."""
    direct = ('[[link]]\nname = "direct"\nup_mbit = 100\nlatency_ms = 5\n'
              'between = [["hq-0", "field-2"]]\n')
    result = simulate(parse(small() + direct))
    assert result["converged"]
    rows = {r["node"]: r for r in result["formations"]["field"]["node_rows"]}
    assert rows["field-2"]["converged_at"] < 10.0 < min(
        rows[n]["converged_at"] for n in ("field-0", "field-1"))
    assert result["bytes_by_link"]["direct"] > 4 * 1024 * 1024


def test_random_outages_replay_with_the_seed_and_delay_convergence() -> None:
    outages = "outages = { mean_up = '20s', mean_down = '40s' }"
    text = small(schedule=outages)
    runs = [simulate(parse(text), seed=s) for s in (5, 5, 6)]
    assert runs[0]["trace"] == runs[1]["trace"] != runs[2]["trace"]
    # seed 5's first outage falls during the transfer (48.5 s against 38.5 s without)
    base = last_converged(simulate(parse(small()), seed=5), "field")
    assert last_converged(runs[0], "field") > base
    with pytest.raises(FleetFileError, match=r"link\[0\].outages: a link takes a schedule"):
        parse(small(schedule=outages + "\nschedule = { every = '1h', up_for = '1h' }"))


def test_a_formation_without_the_storage_reports_insufficient_storage() -> None:
    out = simulate(parse(small(storage=2).replace('duration = "20m"', 'duration = "90s"')))
    field = out["formations"]["field"]
    assert field["converged"] == 0 and field["targeted"] == 3
    assert field["nodes_blocked_by"] == {"insufficient_storage": 3}
    assert {r["blocker"] for r in field["node_rows"]} == {"insufficient_storage"}
    assert out["formations"]["hq"]["converged"] == 1
    assert not out["converged"]


def test_one_node_of_a_formation_can_have_other_hardware() -> None:
    text = SMALL.replace('storage_free_mb = {storage}', 'storage_free_mb = {storage}\n'
                         '[[formation.node]]\nindex = 2\nhardware = {{ storage_free_mb = 2 }}')
    ff = parse(text.format(storage=100_000, schedule="").replace('"20m"', '"90s"'))
    field = ff.formations[1]
    assert field.capabilities_of(0).storage_free_mb == 100_000
    assert field.capabilities_of(2).storage_free_mb == 2
    assert field.capabilities_of(2).cpu_arch == "aarch64"        # the formation's
    out = simulate(ff)
    rows = {r["node"]: r for r in out["formations"]["field"]["node_rows"]}
    assert rows["field-2"]["blocker"] == "insufficient_storage"
    assert rows["field-0"]["active"] == rows["field-1"]["active"] == "1.0.0"
    with pytest.raises(FleetFileError, match=r"formation\[1\]\.node\[0\]\.index: 3"):
        parse(SMALL.replace('storage_free_mb = {storage}', 'storage_free_mb = 1\n'
                              '[[formation.node]]\nindex = 3\nhardware = {{}}')
              .format(schedule=""))


def test_variant_requirements_pick_variants_and_report_incompatible_capabilities() -> None:
    text = small().replace('size = "4M"', 'size = "4M"\nrequirements = { cpu_arch = ["x86_64"] }')
    out = simulate(parse(text.replace('duration = "20m"', 'duration = "60s"')))
    field = out["formations"]["field"]
    assert field["converged"] == 0
    assert field["nodes_blocked_by"] == {"incompatible_capabilities": 3}
    assert out["formations"]["hq"]["converged"] == 1


# ---------------------------------------------------------------------- shipped examples

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "fleets"


def run_example(name: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["run", str(EXAMPLES / f"{name}.toml"), "--json"]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def test_the_shipped_examples_are_the_three_of_issue_18() -> None:
    assert sorted(p.stem for p in EXAMPLES.glob("*.toml")) == ["factory", "retail", "tactical"]


def test_factory_example_reports_the_full_disks(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_example("factory", capsys)
    f = out["formations"]
    for name in ("control", "gpu-cells", "arm-cells"):
        assert f[name]["converged"] == f[name]["targeted"] > 0
    assert f["old-pcs"]["converged"] == 0
    assert f["old-pcs"]["nodes_blocked_by"] == {"insufficient_storage": 2}
    assert set(out["bytes_by_link"]) == {"lan"}
    assert all(row["active"] == "1.1.0" for row in f["gpu-cells"]["node_rows"])


def test_tactical_example_waits_for_its_radio_windows(capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    out = run_example("tactical", capsys)
    assert out["converged"] and out["stopped_early"]
    f = out["formations"]
    assert f["drones-a"]["last_converged_at"] < 600          # over the vehicles' radios
    # the rollback is ordered at 40 min; drones-b's radios are next up at 47 min
    assert 47 * 60 <= f["drones-b"]["first_converged_at"] <= 52 * 60
    assert {r["active"] for r in f["drones-b"]["node_rows"] if r["model"] == "detector"} \
        == {"1.0.0"}
    assert f["vehicles"]["nodes_blocked_by"] == {"node_down": 1}
    nav = [r for r in f["vehicles"]["node_rows"] if r["model"] == "nav"]
    assert {r["active"] for r in nav} == {"2.0.0"}
    assert all(r["target"] is None for r in f["drones-a"]["node_rows"] if r["model"] == "nav")
    assert set(out["bytes_by_link"]) == {"satellite", "radio", "radio-b"}


def test_retail_example_heals_and_cancels(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_example("retail", capsys)
    assert out["converged"]
    f = out["formations"]
    assert f["store-a"]["last_converged_at"] < 600           # the canary went first
    assert f["store-d"]["first_converged_at"] >= 32 * 60     # after its WAN came back
    for store in ("store-a", "store-b", "store-c", "store-d"):
        assert {r["active"] for r in f[store]["node_rows"]} == {"3.0.0"}   # 3.1.0 cancelled
    assert [a["event"] for a in out["actions"]][-1] == "cancel"


def test_header_bytes_charge_each_packet_of_a_link_class() -> None:
    """``header_bytes`` per ``mss`` of payload: the bytes per class grow by that much,
    and a transfer bound by the link takes that much longer."""
    plain = simulate(parse(small()))
    framed = simulate(parse(small().replace("latency_ms = 300",
                                            "latency_ms = 300\nheader_bytes = 66")))
    assert framed["bytes_by_link"]["sat"] > plain["bytes_by_link"]["sat"] * 1.04
    assert last_converged(framed, "field") > last_converged(plain, "field")
