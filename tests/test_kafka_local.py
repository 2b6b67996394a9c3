"""``mailjournal kafka-local``: real KRaft brokers from the Maven jars, 1 and 3 nodes."""

from __future__ import annotations

import json
import random
import signal
import socket
import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import ConfigResource

from devtools.kafka_local import KafkaLocal, KafkaLocalError, free_ports
from mailjournal import cli
from mailjournal.kafka import make_admin, make_producer, raise_on_error
from mailjournal.topics import ensure_topics
from tests.fixtures.kafka import consume_all, kafka_test_config, unique_suffix

pytestmark = pytest.mark.kafka


def _free_base_port(count: int) -> int:
    """A base port with ``count`` consecutive free ports (the CLI's layout)."""
    for _ in range(200):
        base = random.randint(20000, 60000)
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def _dir_processes(d: Path) -> list[int]:
    """Live processes whose command line names d (what `down` must leave none of)."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(d).encode() + b"/" in cmd and state != "Z":
            out.append(int(proc.name))
    return out


def test_cli_single_broker_up_status_down(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "k1"
    base = _free_base_port(2)
    args = ["kafka-local", "--dir", str(d)]
    try:
        assert cli.main([*args[:1], "up", *args[1:], "--port", str(base)]) == 0
        assert capsys.readouterr().out.strip() == f"127.0.0.1:{base}"
        state = json.loads((d / "state.json").read_text())
        (broker,) = state["brokers"]
        assert (broker["port"], broker["controller_port"]) == (base, base + 1)
        assert state["bootstrap"] == f"127.0.0.1:{base}"
        assert "kafka.Kafka" in broker["cmd"]

        assert cli.main(["kafka-local", "status", "--dir", str(d)]) == 0
        assert f"broker 1: alive listening pid={broker['pid']}" in capsys.readouterr().out

        # up again on a running dir only reports it (same pid, no new process)
        assert cli.main(["kafka-local", "up", "--dir", str(d)]) == 0
        assert capsys.readouterr().out.strip() == f"127.0.0.1:{base}"
        assert json.loads((d / "state.json").read_text())["brokers"][0]["pid"] == broker["pid"]
        assert (d / "broker-1" / "logs" / "server.log").stat().st_size > 0  # log4j works
    finally:
        assert cli.main(["kafka-local", "down", "--dir", str(d)]) == 0
    assert _dir_processes(d) == []
    assert cli.main(["kafka-local", "status", "--dir", str(d)]) == 1
    assert "broker 1: dead" in capsys.readouterr().out


def test_broker_that_exits_reports_its_log(tmp_path: Path) -> None:
    """A broker that dies at start (port taken) fails `up` with its own error, not a timeout."""
    ports = free_ports(1)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports[0]))
        squatter.listen()
        local = KafkaLocal(tmp_path / "k", base_port=ports[0])
        try:
            with pytest.raises(KafkaLocalError) as info:
                local.up(timeout=120)
        finally:
            local.down()
    message = str(info.value)
    assert "exited" in message
    assert "Address already in use" in message or "bind" in message.lower()
    assert _dir_processes(tmp_path / "k") == []


def test_three_brokers_replicate_and_survive_one_loss(tmp_path: Path) -> None:
    d = tmp_path / "k3"
    local = KafkaLocal(d, brokers=3)
    try:
        bootstrap = local.up(timeout=240)
        assert len(bootstrap.split(",")) == 3
        config = kafka_test_config(
            bootstrap,
            unique_suffix("rf3"),
            overrides={
                "kafka": {
                    "topics": {
                        "messages": {"replication_factor": 3, "min_insync_replicas": 2},
                    }
                }
            },
        )
        admin = make_admin(config)
        cluster = admin.describe_cluster().result(timeout=10)
        assert sorted(n.id for n in cluster.nodes) == [1, 2, 3]

        topic = config.kafka.topics.messages.name
        ensure_topics(config)
        md = admin.list_topics(topic, timeout=10).topics[topic]
        assert all(len(p.replicas) == 3 and len(p.isrs) == 3 for p in md.partitions.values())
        resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
        # a new topic's metadata reaches every broker of a cluster a moment after creation
        deadline = time.monotonic() + 30
        while True:
            try:
                configs = admin.describe_configs([resource])[resource].result(timeout=10)
                break
            except KafkaException as exc:
                if (
                    exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART
                    or time.monotonic() > deadline
                ):
                    raise
                time.sleep(0.5)  # the poll interval of this deadline loop
        assert configs["min.insync.replicas"].value == "2"

        # one node down: acks=all still succeeds with 2 in-sync replicas
        pids = local.broker_pids()
        local.kill_broker(3)
        assert local.broker_pids() == {1: pids[1], 2: pids[2], 3: None}
        producer = make_producer(config)
        for i in range(20):
            producer.produce(
                topic, b"%d" % i, b"%d" % i, on_delivery=lambda e, _m: raise_on_error(e)
            )
        assert producer.flush(90) == 0

        local.start_broker(3)
        assert all(pid is not None for pid in local.broker_pids().values())
        assert len(consume_all(config, topic, timeout=60)) == 20
    finally:
        local.down()
    assert local.broker_pids() == {1: None, 2: None, 3: None}
    assert _dir_processes(d) == []


def test_sigterm_stop_and_restart_keeps_data(tmp_path: Path) -> None:
    """`down` then `up` on the same dir restarts the cluster on its data."""
    local = KafkaLocal(tmp_path / "k")
    try:
        bootstrap = local.up()
        config = kafka_test_config(bootstrap, unique_suffix("restart"), partitions=1)
        ensure_topics(config)
        producer = make_producer(config)
        producer.produce(config.kafka.topics.messages.name, b"kept", b"k")
        assert producer.flush(30) == 0
        local.kill_broker(1, signal.SIGTERM)
        assert local.broker_pids() == {1: None}
        local.down()
        assert KafkaLocal(tmp_path / "k").up() == bootstrap  # same ports from state.json
        got = consume_all(config, config.kafka.topics.messages.name)
        assert [m.value() for m in got] == [b"kept"]
    finally:
        KafkaLocal(tmp_path / "k").down()
    assert _dir_processes(tmp_path / "k") == []


def test_free_ports_stay_free_while_a_server_restarts() -> None:
    """A server stopped and started again on its port (slapd, a broker) must find it free. A
    port of the ephemeral range can meanwhile become the source port of any connection on the
    machine, and the restart's bind fails (slapd exited 1 so in a full CI run); the ports
    handed out lie below that range, where no connection is given a port."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = free_ports(8)
    assert len(set(ports)) == 8
    assert all(1024 <= p < low for p in ports), (ports, low)
    # free now: each binds, as a server's listener would
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
    # the failure they avoid: a connection bound to a server's port makes its bind fail
    with socket.socket() as listener, socket.socket() as client:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client.bind(("127.0.0.1", ports[0]))
        client.connect(listener.getsockname())
        with socket.socket() as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError):
                server.bind(("127.0.0.1", ports[0]))
