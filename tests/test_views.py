"""The views the master renders from the registry: inventory, hostfile, known_hosts."""

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
