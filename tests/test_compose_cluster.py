"""deploy/compose.cluster.yaml, proved as tests/test_compose.py proves compose.yaml: its structure
against the rules that matter, the nats cluster configuration with three real nats-servers (routes
formed with the route password, refused without it), and every service run as a local process with
its exact command and environment: 3 nats nodes, 2 partitioned sinks, ingest, query, the publisher."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

from logmesh.cli.secrets_commands import nats_config_text
from logmesh.common.nats_cluster import ROUTE_PASSWORD_VARIABLE as ROUTE_PASSWORD
from logmesh.common.nats_cluster import SERVER_NAME_VARIABLE
from logmesh.common.nats_roles import ROLES, password_variable, secret_variable
from logmesh.common.partitions import parse_partition_list, partition_of, store_file
from logmesh.common.secrets_store import ALL_SECRETS, CLUSTER_SECRETS, new_secret
from tests.compose_local import (
    DEPLOY,
    LocalCompose,
    anonymous_nats,
    check_dependencies,
    check_image_built_once,
    is_nats,
    load_compose,
    secrets_used,
    start_order,
)
from tests.harness import wait_for

NODES = ("nats-1", "nats-2", "nats-3")
SINKS = ("sink-0", "sink-1")
IMAGE_BUILDER = "sink-0"
PARTITIONS, REPLICAS = 4, 3
ROUTE_URLS = {f"LOGMESH_ROUTE_URL_{i}": node for i, node in enumerate(NODES, 1)}
NATS_CONFIG = "nats-cluster.conf"
NATS_CONFIG_TARGET = "/etc/nats/logmesh.conf"
SEED_EVENTS, SEED_UNIQUE = 20_000, 13_000
PRIMARIES = {0: "sink-0", 1: "sink-1", 2: "sink-0", 3: "sink-1"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose("compose.cluster.yaml")


def test_each_service_gets_only_its_own_secrets(compose: dict[str, Any]) -> None:
    """Each node needs every role's password (its users) and the route password; a service sees only
    its own password and token, as in compose.yaml."""
    node_secrets = {password_variable(role) for role in ROLES} | {ROUTE_PASSWORD}
    expected = {
        **{node: node_secrets for node in NODES},
        **{sink: {"LOGMESH_SINK_NATS_PASSWORD"} for sink in SINKS},
        "ingest": {"LOGMESH_INGEST_NATS_PASSWORD", "LOGMESH_INGEST_TOKEN", "LOGMESH_MSG_ID_KEY"},
        "query": {"LOGMESH_QUERY_NATS_PASSWORD", "LOGMESH_QUERY_TOKEN"},
        "publisher": {"LOGMESH_INGEST_TOKEN"},
    }
    # The route password is the one secret compose.yaml has no use for; `logmesh secrets` writes it
    # beside the others (the run below reads it from the env file that command wrote).
    generated = {secret_variable(name) for name in (*ALL_SECRETS, *CLUSTER_SECRETS)}
    for name, service in compose["services"].items():
        used = secrets_used(service)  # each ${NAME:?...}: refuses to start without the env file
        assert used == expected[name], name
        assert used <= generated, name
    users = {name: s["environment"].get("LOGMESH_NATS_USER") for name, s in compose["services"].items()}
    assert users == {
        **dict.fromkeys(NODES),
        **dict.fromkeys(SINKS, "sink"),
        "ingest": "ingest",
        "query": "query",
        "publisher": None,
    }


def test_the_compose_file_follows_the_rules(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {*NODES, *SINKS, "ingest", "query", "publisher"}
    for name in (*NODES, *SINKS, "ingest", "query"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
        assert services[name]["restart"] in ("unless-stopped", "always"), name
    assert services["publisher"]["restart"] == "no"
    check_dependencies(services, IMAGE_BUILDER)
    assert start_order(services)[-1] == "publisher"
    for name in (*SINKS, "ingest", "query"):
        assert set(NODES) <= set(services[name]["depends_on"]), f"{name} starts once the cluster is healthy"
    # Each node and each sink has a volume of its own; nothing else keeps state.
    owners: dict[str, list[str]] = {}
    for name, service in services.items():
        for spec in service.get("volumes", []):
            if not spec.startswith("./"):
                owners.setdefault(spec.split(":")[0], []).append(name)
    assert owners == {f"{name}-data": [name] for name in (*NODES, *SINKS)}
    assert set(compose["volumes"]) == set(owners)
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert published == {"ingest": ["8081:8081"], "query": ["8082:8082"]}, "only the HTTP ports reach the host"


def test_the_cluster_config_is_the_one_the_code_renders() -> None:
    """deploy/nats-cluster.conf is ``logmesh nats-config --cluster-size 3``'s output, as
    deploy/nats-server.conf is ``logmesh nats-config``'s: one permission table, the same users on every
    node, the cluster block the code writes."""
    assert (DEPLOY / NATS_CONFIG).read_text() == nats_config_text(cluster_size=len(NODES))


def _variables_read(config: str) -> set[str]:
    """The variables a nats-server configuration takes from the environment: ``$NAME`` outside comments
    and quoted strings (the permission subjects like ``"$JS.API..."`` are no variables)."""
    code = "\n".join(line for line in config.splitlines() if not line.lstrip().startswith("#"))
    return set(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", re.sub(r'"[^"]*"', '""', code)))


def test_three_nats_nodes_named_and_routed_by_their_environment(compose: dict[str, Any]) -> None:
    """Every node runs the one config file; what differs between them (the name, the route URLs with
    the route password) comes by environment, as the config's header says."""
    services = compose["services"]
    assert [name for name, s in services.items() if is_nats(s)] == list(NODES)
    read = _variables_read((DEPLOY / NATS_CONFIG).read_text())
    assert read == {SERVER_NAME_VARIABLE, ROUTE_PASSWORD, *ROUTE_URLS, *(password_variable(role) for role in ROLES)}
    for node in NODES:
        service = services[node]
        command = service["command"]
        assert "--jetstream" in command
        assert command[command.index("--config") + 1] == NATS_CONFIG_TARGET
        assert command[command.index("--store_dir") + 1] == "/data"
        assert "--server_name" not in command, "the config takes the name from the environment"
        overriding = [a for a in command if re.fullmatch(r"--?(cluster|cluster_listen|cluster_name|routes)", a)]
        assert not overriding, "a cluster or route URL on the command line replaces the config's route authorization"
        assert service["volumes"] == [f"{node}-data:/data", f"./{NATS_CONFIG}:{NATS_CONFIG_TARGET}:ro"]
        env = service["environment"]
        assert set(env) == read, f"{node} gets what the config reads, nothing else"
        assert env[SERVER_NAME_VARIABLE] == node, "JetStream in a cluster needs a stable, unique name"
        # One route URL per node, each with the route user and the password from the env file.
        for variable, target in ROUTE_URLS.items():
            assert re.fullmatch(rf"nats-route://route:\$\{{{ROUTE_PASSWORD}:\?[^}}]+\}}@{target}:6222", env[variable])


def test_the_services_reach_every_node_and_create_the_stream_partitioned_and_replicated(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    every_node = ",".join(f"nats://{node}:4222" for node in NODES)
    for name in (*SINKS, "ingest", "query"):
        assert services[name]["environment"]["LOGMESH_NATS_URL"] == every_node, name
    # Whoever starts first creates the stream: each with the same shape. Query never creates it.
    for name in (*SINKS, "ingest"):
        env = services[name]["environment"]
        assert (env["LOGMESH_STREAM_PARTITIONS"], env["LOGMESH_REPLICAS"]) == (str(PARTITIONS), str(REPLICAS)), name
    assert "LOGMESH_STREAM_PARTITIONS" not in services["query"]["environment"]


def test_each_partition_has_one_primary_sink_and_the_other_stands_by(compose: dict[str, Any]) -> None:
    primaries: dict[int, str] = {}
    for sink in SINKS:
        command = compose["services"][sink]["command"]
        assert command[:2] == ["logmesh", "sink"]
        assert command[command.index("--sink-name") + 1] == sink
        own = parse_partition_list(command[command.index("--partitions") + 1])
        standby = parse_partition_list(command[command.index("--standby") + 1])
        assert own is not None and standby is not None, sink
        assert set(own) | set(standby) == set(range(PARTITIONS)) and not set(own) & set(standby), sink
        for k in own:
            assert k not in primaries, f"partition {k}: primary of {primaries.get(k)} and {sink}"
            primaries[k] = sink
    assert primaries == PRIMARIES


def test_the_image_is_built_once_and_never_pulled(compose: dict[str, Any]) -> None:
    check_image_built_once(compose["services"], IMAGE_BUILDER)


def test_the_nodes_run_the_nats_server_the_project_is_tested_with(compose: dict[str, Any]) -> None:
    """compose.yaml's nats image is the tested minor (tests/test_compose.py); every node runs it."""
    single = load_compose("compose.yaml")["services"]["nats"]["image"]
    assert {compose["services"][node]["image"] for node in NODES} == {single}


def _monitor(local: LocalCompose, node: str, path: str) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"http://{local.address(node, 8222)}/{path}").json()
    return answer


def _route_peers(local: LocalCompose, node: str) -> set[str]:
    return {route["remote_name"] for route in _monitor(local, node, "routez")["routes"]}


def _routes_to_all_but_itself(local: LocalCompose, node: str) -> bool:
    return _route_peers(local, node) == set(NODES) - {node}


def _log_since(local: LocalCompose, name: str, offset: int) -> str:
    return (local.root / f"{name}.log").read_text(errors="replace")[offset:]


def test_the_cluster_config_forms_a_cluster_and_refuses_a_wrong_route_password(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """The three nodes as compose runs them: routes between every pair, one JetStream meta group;
    a node started with another route password gets no route (and says why), and joins again with
    the right one."""
    route_password = new_secret()
    local = LocalCompose(compose, tmp_path, secrets={ROUTE_PASSWORD: route_password})
    try:
        local.up(only=NODES)  # healthy: JetStream current with the cluster's meta leader
        for node in NODES:
            wait_for(partial(_routes_to_all_but_itself, local, node), 20, f"{node}'s routes")
        meta = _monitor(local, "nats-1", "jsz")["meta_cluster"]
        assert meta["cluster_size"] == len(NODES) and meta["leader"] in NODES
        for node in NODES:
            assert "Authorization Violation" in anonymous_nats(f"nats://{local.address(node, 4222)}")

        # nats-3 from an env file with another route password: both sides refuse the route.
        local.stop("nats-3")
        offset = {node: len((tmp_path / f"{node}.log").read_bytes()) for node in NODES}
        local.secrets[ROUTE_PASSWORD] = new_secret()
        local.start("nats-3")
        wait_for(
            lambda: "authentication error" in _log_since(local, "nats-1", offset["nats-1"]), 20, "nats-1 to refuse"
        )
        wait_for(lambda: "Authorization Violation" in _log_since(local, "nats-3", offset["nats-3"]), 20, "the refusal")
        assert _monitor(local, "nats-3", "routez")["num_routes"] == 0
        assert "nats-3" not in _route_peers(local, "nats-1") | _route_peers(local, "nats-2")

        # The same node with the right password is a member again.
        local.stop("nats-3")
        local.secrets[ROUTE_PASSWORD] = route_password
        local.up(only=NODES)
        wait_for(partial(_routes_to_all_but_itself, local, "nats-3"), 20, "nats-3's routes")
    finally:
        local.down()


# The run: every service as compose starts it, the seed published, checked over HTTP and in the files.


def _cluster_stats_once_drained(local: LocalCompose, arrived: int) -> dict[str, Any]:
    """/stats once ``arrived`` events are counted, every partition answered and no consumer holds
    anything; else {}."""
    stats: dict[str, Any] = httpx.get(f"http://{local.address('query', 8082)}/stats", headers=local.headers()).json()
    parts = stats.get("partitions") or []
    done = (
        stats["arrived"] == arrived
        and stats["missing_partitions"] == []
        and len(parts) == PARTITIONS
        and all(p["consumer"]["pending"] == 0 and p["consumer"]["ack_pending"] == 0 for p in parts)
    )
    return stats if done else {}


def _stored_identities(local: LocalCompose) -> dict[str, list[tuple[str, str]]]:
    """The (topic, event_id) rows of every partition file on the sinks' volumes, by ``<sink>/<file>``,
    read once the sinks are stopped; a file holding a topic of another partition fails here."""
    stored: dict[str, list[tuple[str, str]]] = {}
    for sink in SINKS:
        for path in sorted((local.root / f"{sink}-data").glob("*.duckdb")):
            k = int(path.stem.removeprefix("partition-"))
            assert path == store_file(path.parent, k, PARTITIONS), path.name
            with duckdb.connect(str(path), read_only=True) as db:
                rows: list[tuple[str, str]] = db.execute("SELECT topic, event_id FROM events").fetchall()
            assert {partition_of(topic, PARTITIONS) for topic, _ in rows} <= {k}, f"{sink}/{path.name}"
            stored[f"{sink}/{path.name}"] = rows
    return stored


def _log_sizes(local: LocalCompose) -> dict[str, int]:
    """Where each sink's log ends now: what an ``up`` logs comes after."""
    logs = {sink: local.root / f"{sink}.log" for sink in SINKS}
    return {sink: log.stat().st_size if log.exists() else 0 for sink, log in logs.items()}


# The sink's own lines (--log-format json): when it starts claiming leases, and each lease it wins.
_CLAIMING = re.compile(r"sink (?P<sink>\S+): \d+ partitions in stream \S+; .*, lease TTL (?P<ttl>[\d.]+) s")
_WON = re.compile(r"partition (?P<k>\d+): lease won by (?P<sink>\S+)")


def _lease_history(
    local: LocalCompose, since: dict[str, int]
) -> tuple[dict[str, datetime], float, list[tuple[int, str]]]:
    """From the sinks' logs since ``since``: when each began claiming its leases (its primaries are
    tried at once then), the lease TTL, and every (partition, sink) lease won."""
    began: dict[str, datetime] = {}
    ttls: set[float] = set()
    won: list[tuple[int, str]] = []
    for sink in SINKS:
        text = (local.root / f"{sink}.log").read_bytes()[since[sink] :].decode(errors="replace")
        for line in (json.loads(raw) for raw in text.splitlines() if raw.startswith("{")):
            if claiming := _CLAIMING.fullmatch(line["message"]):
                assert claiming["sink"] == sink and sink not in began, line
                began[sink] = datetime.fromisoformat(line["time"])
                ttls.add(float(claiming["ttl"]))
            elif lease := _WON.fullmatch(line["message"].removesuffix(" (standby)")):
                assert lease["sink"] == sink, line
                won.append((int(lease["k"]), sink))
    # A sink that has not begun claiming by now (slow to start on a busy machine) holds nothing: the
    # other one took its partitions after a TTL of absence, as a standby does.
    assert began and set(began) <= set(SINKS) and len(ttls) == 1, (began, ttls)
    return began, ttls.pop(), won


def _check_owners(local: LocalCompose, stats: dict[str, Any], since: dict[str, int]) -> dict[int, str]:
    """Each partition has exactly one owner, one of the two sinks, and every lease of it won in this
    ``up`` that came last was won by that sink (a lease that lapsed while the machine was busy may be
    won again, by its holder or its standby, see docs/scaling.md, "An election can cost the leases");
    and where the compose layout decides the owner, it is the primary.

    Compose starts sink-1 as soon as sink-0 is started, so both usually begin claiming within a
    moment of each other, but nothing bounds that moment. A primary tries its partitions as soon as it
    begins; a standby takes one only after finding it free for a whole lease TTL. So when both began
    within half a TTL of each other (the other half for the primary's create to land), every
    partition is its primary's. When one began later than that (or has not begun yet), its partitions
    may have gone to the other sink, which keeps them (no rebalancing); the early sink's own
    partitions are still its own.
    """
    owners = {p["partition"]: p["owner"] for p in stats["partitions"]}
    assert sorted(owners) == list(range(PARTITIONS)) and set(owners.values()) <= set(SINKS), owners
    began, ttl, won = _lease_history(local, since)
    # A lease that lapsed on a busy machine may go to the standby (no rebalancing): the last win of each
    # partition is its owner's, and nobody else holds it.
    last = {k: sink for k, sink in won}
    assert last == owners, "the last lease won of each partition is the owner /stats names"
    lapsed = len(won) > len(last)  # some lease was won again: the layout no longer decides its owner
    together = len(began) == len(SINKS) and abs((began["sink-0"] - began["sink-1"]).total_seconds()) < ttl / 2
    if together and not lapsed:
        assert owners == PRIMARIES
    else:
        never = datetime.max.replace(tzinfo=UTC)
        late = max(SINKS, key=lambda sink: began.get(sink, never))
        assert all(owner == PRIMARIES[k] or PRIMARIES[k] == late for k, owner in owners.items()), (owners, began)
    return owners


@pytest.fixture
def local(compose: dict[str, Any], tmp_path: Path) -> Iterator[LocalCompose]:
    stack = LocalCompose(compose, tmp_path)
    yield stack
    stack.down()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_cluster_services_run_as_written_and_dedup_across_down_and_up(local: LocalCompose) -> None:
    since = _log_sizes(local)
    local.up()
    local.run_publisher()
    first = wait_for(partial(_cluster_stats_once_drained, local, SEED_EVENTS), 90, "the sinks to store the seed")
    assert first["unique_processed"] == SEED_UNIQUE and first["invariant_holds"]
    assert first["duplicate_dropped"] == SEED_EVENTS - SEED_UNIQUE
    owners = _check_owners(local, first, since)
    assert all(p["ready"] for p in first["partitions"])
    assert sum(p["unique_processed"] for p in first["partitions"]) == SEED_UNIQUE
    cluster = first["cluster"]
    assert cluster["replicas"] == REPLICAS and cluster["stream_leader"] in NODES
    assert {n["name"]: n["ok"] for n in cluster["nodes"]} == dict.fromkeys(NODES, True)

    query, ingest = f"http://{local.address('query', 8082)}", f"http://{local.address('ingest', 8081)}"
    assert httpx.get(f"{query}/", headers=local.headers()).status_code == 200  # the dashboard
    assert httpx.get(f"{query}/readyz").status_code == 200
    # Without the tokens nothing gets in, over HTTP or NATS, on any node.
    assert httpx.get(f"{query}/stats").status_code == 401
    assert httpx.post(f"{ingest}/publish", json=[]).status_code == 401
    assert httpx.post(f"{ingest}/publish", json=[], headers=local.headers()).status_code == 401
    for node in NODES:
        assert "Authorization Violation" in anonymous_nats(f"nats://{local.address(node, 4222)}")

    # docker compose down: the files hold every distinct event once, each in its partition's file,
    # each sink only the partitions it owns.
    local.down()
    stored = _stored_identities(local)
    assert sorted(stored) == sorted(f"{sink}/partition-{k}.duckdb" for k, sink in owners.items())
    rows = [row for part in stored.values() for row in part]
    assert len(rows) == len(set(rows)) == SEED_UNIQUE

    # docker compose up: same volumes, every event and counter kept ...
    since = _log_sizes(local)
    local.up()
    kept = wait_for(partial(_cluster_stats_once_drained, local, SEED_EVENTS), 90, "the counters after a restart")
    _check_owners(local, kept, since)  # a partition that changed hands is rebuilt from the stream
    for key in ("received", "unique_processed", "duplicates", "invalid", "topics"):
        assert kept[key] == first[key], key

    # ... and the second `up` runs the publisher again: the same 20,000 events, all duplicates now.
    local.run_publisher()
    second = wait_for(partial(_cluster_stats_once_drained, local, 2 * SEED_EVENTS), 90, "the re-sent events")
    assert second["unique_processed"] == SEED_UNIQUE and second["invariant_holds"]
    assert second["duplicate_dropped"] == first["duplicate_dropped"] + SEED_EVENTS
    assert [(t["topic"], t["count"]) for t in second["topics"]] == [(t["topic"], t["count"]) for t in first["topics"]]
