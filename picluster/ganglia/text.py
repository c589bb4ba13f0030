"""The text of gmond.conf and gmetad.conf for a `GangliaConfig`, rendered
deterministically: the same config always gives the same bytes, so a daemon restarts only
when its config changed.  Only checked values are written: every field of the config by
`SCHEMA`, the host's name and address, the rrd folder; anything else raises ValueError
before a line is rendered (a newline or a brace could add a block root's gmond loads)."""

from __future__ import annotations

import glob
import ipaddress
import re
from dataclasses import asdict
from pathlib import Path

from picluster.ganglia.config import SCHEMA, GangliaConfig
from picluster.layout import valid_hostname
from picluster.schema import IPv4, shown

__all__ = ["gmetad_conf", "gmond_conf"]

_HEADER = "# Rendered by picluster from ip/, master and local-vars/; rewritten on every change.\n"


def _modules() -> str:
    # Module paths depend on the architecture (x86_64-linux-gnu, aarch64-linux-gnu...).
    found = {Path(p).name: p for p in glob.glob("/usr/lib/*/ganglia/mod*.so")}
    lines = ['  module {\n    name = "core_metrics"\n  }\n']
    for name, library in (("cpu_module", "modcpu.so"), ("load_module", "modload.so"),
                          ("mem_module", "modmem.so"), ("net_module", "modnet.so"),
                          ("sys_module", "modsys.so")):
        if library in found:
            lines.append(f'  module {{\n    name = "{name}"\n    path = "{found[library]}"\n  }}\n')
    return "modules {\n" + "".join(lines) + "}\n"


_METRICS = """\
collection_group {
  collect_once = yes
  time_threshold = HEARTBEAT
  metric { name = "heartbeat" }
}
collection_group {
  collect_once = yes
  time_threshold = 1200
  metric { name = "cpu_num" }
  metric { name = "mem_total" }
  metric { name = "boottime" }
  metric { name = "machine_type" }
  metric { name = "os_name" }
  metric { name = "os_release" }
}
collection_group {
  collect_every = 20
  time_threshold = 90
  metric { name = "cpu_user" value_threshold = "1.0" }
  metric { name = "cpu_system" value_threshold = "1.0" }
  metric { name = "cpu_idle" value_threshold = "5.0" }
}
collection_group {
  collect_every = 20
  time_threshold = 90
  metric { name = "load_one" value_threshold = "1.0" }
  metric { name = "load_five" value_threshold = "1.0" }
}
collection_group {
  collect_every = 40
  time_threshold = 180
  metric { name = "mem_free" value_threshold = "1024" }
  metric { name = "bytes_in" value_threshold = 4096 }
  metric { name = "bytes_out" value_threshold = 4096 }
}
"""


def _checked(config: GangliaConfig) -> GangliaConfig:
    """`config` with every field checked (ValueError names the first bad one)."""
    return GangliaConfig.from_args(SCHEMA.check(asdict(config)))


def _hostname(hostname: str) -> str:
    if not valid_hostname(hostname, dotted=True):
        raise ValueError(f"hostname {shown(hostname)} is not a host name: letters, digits, "
                         "hyphens and dots")
    return hostname


def _quotable(path: Path) -> str:
    text = str(path)
    if re.search(r'["\\\x00-\x1f\x7f]', text):
        raise ValueError(f"{shown(text)} cannot be quoted in gmetad.conf: no quotes, "
                         "backslashes or control characters")
    return text


def gmond_conf(config: GangliaConfig, *, own_ip: str, hostname: str, is_master: bool) -> str:
    """gmond.conf for one node: unicast to the master; only the master listens (to its
    members only) and answers gmetad."""
    config, hostname = _checked(config), _hostname(hostname)
    own_ip = IPv4().check(own_ip, "own_ip")
    listen = ""
    if is_master:
        allowed = "".join(f'    access {{ ip = {ip} mask = 32 action = "allow" }}\n'
                          for ip in sorted(set(config.members) | {own_ip},
                                           key=ipaddress.IPv4Address))
        listen = (f"udp_recv_channel {{\n  bind = {own_ip}\n  port = {config.gmond_port}\n"
                  f'  acl {{\n    default = "deny"\n{allowed}  }}\n}}\n'
                  f"tcp_accept_channel {{\n  bind = {own_ip}\n  port = {config.gmond_port}\n}}\n")
    return (_HEADER.replace("#", "/*", 1).rstrip("\n") + " */\n"
            "globals {\n  daemonize = no\n  setuid = no\n  debug_level = 0\n"
            "  max_udp_msg_len = 1472\n  mute = no\n  deaf = " + ("no" if is_master else "yes")
            + f"\n  host_dmax = {config.host_dmax}\n  cleanup_threshold = 300\n  gexec = no\n"
            f"  send_metadata_interval = {config.metadata_interval}\n"
            f'  override_hostname = "{hostname}"\n}}\n'
            f'cluster {{\n  name = "{config.cluster}"\n  owner = "picluster"\n}}\n'
            f'host {{\n  location = "{hostname}"\n}}\n'
            f"udp_send_channel {{\n  host = {config.master_ip}\n  port = {config.gmond_port}\n"
            "  ttl = 1\n}\n" + listen + _modules()
            # A restarted master gmond knows a host again at its next heartbeat.
            + _METRICS.replace("HEARTBEAT", str(config.metadata_interval)))


def gmetad_conf(config: GangliaConfig, *, rrd_dir: Path) -> str:
    """gmetad.conf for the master: one data source, its own gmond; the members may read."""
    config, rrd_root = _checked(config), _quotable(rrd_dir)
    trusted = " ".join(sorted(set(config.members) | {config.master_ip, "127.0.0.1"},
                              key=ipaddress.IPv4Address))
    return (_HEADER
            + f'data_source "{config.cluster}" 5 {config.master_ip}:{config.gmond_port}\n'
            f'gridname "{config.cluster}"\n'
            "setuid off\n"
            f"xml_port {config.gmetad_xml_port}\n"
            f"interactive_port {config.gmetad_xml_port + 1}\n"
            f"trusted_hosts {trusted}\n"
            f'rrd_rootdir "{rrd_root}"\n')
