"""How one service reaches another: the one rule every URL in the appliance is built from.

A client (a service, the CLI, Prometheus, the gateway) reaches service B in one of four ways:

- **other host** (a cluster): B runs on another host of the inventory, so the client dials that
  host's address (``HostMap``: which host runs which service, and each host's address);
- **container network**: client and B are containers on the same stack network, so B's service
  name (the network's DNS);
- **same host**: B's bind address as a client dials it. A wildcard bind (``0.0.0.0``, ``::``)
  says where a server *listens*, never where a client *connects*: clients get loopback (or,
  from another host, the host's address), never ``0.0.0.0``;
- **gateway**: through the TLS gateway (``https://``), at the gateway's listen address as a
  client dials it.

IPv6 addresses come back in brackets, ready for ``host:port`` and URLs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

LOOPBACK = {4: "127.0.0.1", 6: "::1"}


def dial_address(listen_address: str) -> str:
    """The host part of a URL that reaches a server listening on ``listen_address`` from the same
    host: a wildcard becomes loopback of the same family; IPv6 is bracketed; a DNS name stays."""
    try:
        ip = ipaddress.ip_address(listen_address.strip("[]"))
    except ValueError:
        return listen_address
    if ip.is_unspecified:
        ip = ipaddress.ip_address(LOOPBACK[ip.version])
    return f"[{ip}]" if ip.version == 6 else str(ip)


def is_loopback(address: str) -> bool:
    """Whether a server listening on ``address`` is reachable from this host alone."""
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return address == "localhost"


@dataclass(frozen=True)
class HostMap:
    """Where services run in a cluster: each host's address (as other hosts dial it) and the host
    of each service. A service not listed runs on ``default`` (the first control host)."""

    addresses: Mapping[str, str]
    """Host name -> address other hosts dial (the inventory's ``ansible_host``)."""
    services: Mapping[str, str] = field(default_factory=dict)
    """Service name -> host name."""
    default: str | None = None
    """Host of every service not in ``services``."""

    def host_of(self, service: str) -> str | None:
        """The host that runs ``service``, or None when the map does not say (one-host stack)."""
        return self.services.get(service, self.default)

    def address_of(self, host: str) -> str:
        """The address other hosts dial to reach ``host``."""
        return dial_address(self.addresses.get(host, host))


@dataclass(frozen=True)
class Addressing:
    """The rule, for one client: which host it runs on (``here``) and how the stack binds."""

    bind_address: str
    """Where the services listen (the answers' ``bind_address``)."""
    hosts: HostMap | None = None
    """The cluster's host map; None on one host."""
    here: str | None = None
    """The host this client runs on (a name in ``hosts``)."""

    def host(self, service: str, inside: bool = False) -> str:
        """Host part of ``service``'s address as this client dials it; ``inside``: the client is a
        container on the stack network."""
        target = self.hosts.host_of(service) if self.hosts else None
        if self.hosts and target is not None and target != self.here:
            return self.hosts.address_of(target)
        if inside:
            return service
        return dial_address(self.bind_address)

    def host_address(self, host: str) -> str:
        """How this client dials the cluster host named ``host``: its own bind address when that
        host is ``here``, else the address other hosts dial it at."""
        if host == self.here or self.hosts is None:
            return dial_address(self.bind_address)
        return self.hosts.address_of(host)

    def url(self, service: str, port: int, inside: bool = False, scheme: str = "http") -> str:
        """``scheme://host:port`` of ``service`` as this client dials it."""
        return f"{scheme}://{self.host(service, inside)}:{port}"

    def gateway_url(self, listen_address: str, port: int, path: str = "") -> str:
        """A service through the TLS gateway that listens on ``listen_address``."""
        target = self.hosts.host_of("gateway") if self.hosts else None
        if self.hosts and target is not None and target != self.here:
            host = self.hosts.address_of(target)
        else:
            host = dial_address(listen_address)
        return f"https://{host}:{port}{path}"
