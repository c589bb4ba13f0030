from pathlib import Path

from picluster.ganglia import GangliaConfig, gmetad_conf, gmond_conf
from picluster.master.views import render_views
from picluster.registry import Member, Membership

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAbc"


def membership() -> Membership:
    members = (Member("b827eb000003", "198.18.0.13", {"cores": 4, "hostname": "pi-3",
                                                      "host_key": KEY}),
               Member("b827eb000001", "198.18.0.11", {"cores": 2, "hostname": "pi-1",
                                                      "host_key": KEY}),
               Member("b827eb000002", "198.18.0.2", {"hostname": "pi-2"}))
    return Membership(members, master="b827eb000001")


def test_views_follow_membership_deterministically() -> None:
    views = render_views(membership(), "pi")
    assert views == render_views(Membership(tuple(reversed(membership().members)),
                                            "b827eb000001"), "pi")
    assert "[master]\n198.18.0.11 mac=b827eb000001 hostname=pi-1\n" in views.inventory
    nodes = views.inventory.split("[nodes]\n")[1].split("\n\n")[0].splitlines()
    assert nodes == ["198.18.0.2 mac=b827eb000002 hostname=pi-2",
                     "198.18.0.13 mac=b827eb000003 hostname=pi-3"]  # by IP, numerically
    assert "ansible_user=pi" in views.inventory
    lines = [line for line in views.hostfile.splitlines() if not line.startswith("#")]
    assert lines == ["198.18.0.11 slots=2", "198.18.0.2 slots=1", "198.18.0.13 slots=4"]
    assert views.known_hosts.splitlines() == [f"198.18.0.11 {KEY}", f"198.18.0.13 {KEY}"]
    assert set(views.files()) == {"inventory", "hostfile"}


def test_without_a_master_every_member_is_a_node() -> None:
    views = render_views(Membership(membership().members, None), "root")
    assert "[master]\n\n[nodes]" in views.inventory


def test_gmond_sends_to_the_master_and_only_the_master_listens() -> None:
    config = GangliaConfig("lab", "198.18.0.11", members=("198.18.0.13", "198.18.0.2"))
    master = gmond_conf(config, own_ip="198.18.0.11", hostname="pi-1", is_master=True)
    worker = gmond_conf(config.for_worker(), own_ip="198.18.0.13", hostname="pi-3",
                        is_master=False)
    for text in (master, worker):
        assert "udp_send_channel {\n  host = 198.18.0.11\n  port = 8649" in text
        assert "daemonize = no" in text and "setuid = no" in text
        assert "mcast" not in text
    assert "tcp_accept_channel" in master and 'default = "deny"' in master
    assert [line.split()[4] for line in master.splitlines() if "access {" in line] == \
        ["198.18.0.2", "198.18.0.11", "198.18.0.13"]
    assert "tcp_accept_channel" not in worker and "udp_recv_channel" not in worker
    assert 'override_hostname = "pi-3"' in worker


def test_gmetad_reads_the_master_and_trusts_members(tmp_path: Path) -> None:
    config = GangliaConfig("lab", "198.18.0.11", members=("198.18.0.13",))
    text = gmetad_conf(config, rrd_dir=tmp_path)
    assert 'data_source "lab" 5 198.18.0.11:8649' in text
    assert "trusted_hosts 127.0.0.1 198.18.0.11 198.18.0.13" in text
    assert "xml_port 8651" in text and "setuid off" in text


def test_worker_configs_do_not_depend_on_membership() -> None:
    one = GangliaConfig("lab", "198.18.0.11", members=("198.18.0.13",))
    two = GangliaConfig("lab", "198.18.0.11", members=("198.18.0.14",))
    assert one.for_worker() == two.for_worker()
    assert GangliaConfig.from_args({**vars(one), "extra": 1}) == one
