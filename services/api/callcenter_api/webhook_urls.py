"""Which URLs a webhook may be delivered to: http(s) only, and never this api itself.

"This api itself" is any URL whose port is one the api answers on (`CC_API_PORT`, the port of the
request that creates the subscription, the port of `CC_API_PUBLIC_URL`) and whose host is one of
its addresses: the host of `CC_API_PUBLIC_URL` or of the request, `CC_API_HOST`, a loopback or
unspecified address (127.0.0.0/8, ::1, 0.0.0.0, ::), and, when the api listens on every interface
(`CC_API_HOST=0.0.0.0`), the addresses of this machine's host name. A host name is resolved (in the
event loop's resolver thread, bounded by `RESOLVE_TIMEOUT_S`) and checked address by address, so a
name that points at 127.0.0.1 is caught as well as the literal; on one of those ports a name that
does not resolve is refused too, since nothing shows it is not the api. Any other port is not the
api's, whatever the host.

The celery worker resolves the name again when it delivers; a name whose address changes after the
subscription was made is not checked again here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

RESOLVE_TIMEOUT_S = 3.0
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _port(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


@dataclass(frozen=True)
class ApiAddress:
    """Where the api answers: its configured host and port, the request's URL, its public URL."""

    host: str
    port: int
    request_url: str = ""
    public_url: str | None = None

    def ports(self) -> set[int]:
        ports = {self.port}
        for url in (self.request_url, self.public_url):
            if url:
                ports.add(_port(urlsplit(url)))
        return ports

    def names(self) -> set[str]:
        names = {self.host.lower()}
        for url in (self.request_url, self.public_url):
            if url and urlsplit(url).hostname:
                names.add((urlsplit(url).hostname or "").lower())
        return names - {""}


async def _addresses(host: str, port: int) -> set[IpAddress]:
    """The addresses `host` resolves to (an IP literal is itself); raises OSError or TimeoutError."""
    try:
        return {_unmapped(ipaddress.ip_address(host))}
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_S)
    # an IPv6 scope (fe80::1%eth0) is not part of the address
    return {_unmapped(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])) for info in infos}


def _unmapped(address: IpAddress) -> IpAddress:
    """::ffff:127.0.0.1 is 127.0.0.1 (Python before 3.13 does not call the mapped form loopback)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


async def _own_addresses(api: ApiAddress) -> set[IpAddress]:
    """The api's addresses that are neither loopback nor unspecified (those are always its own)."""
    names = set(api.names())
    try:
        if ipaddress.ip_address(api.host).is_unspecified:
            names.add(socket.gethostname())
    except ValueError:
        pass
    own: set[IpAddress] = set()
    for name in names:
        try:
            own |= await _addresses(name, api.port)
        except (OSError, TimeoutError):
            continue  # a name of the api's that does not resolve here matches no address
    return own


async def url_refusal(url: str, api: ApiAddress) -> str | None:
    """Why `url` may not be a webhook target, or None."""
    try:
        parts = urlsplit(url)
        port = _port(parts)
    except ValueError as exc:
        return f"not a URL: {exc}"
    if parts.scheme not in ("http", "https"):
        return "only http and https URLs are delivered to"
    host = (parts.hostname or "").lower()
    if not host:
        return "the URL has no host"
    if port not in api.ports():
        return None  # another port: not this api, whatever the host
    if host in api.names() or host == "localhost":
        return "the URL points at this api itself"
    try:
        addresses = await _addresses(host, port)
    except TimeoutError:
        return f"the host name {host!r} did not resolve within {RESOLVE_TIMEOUT_S:g} s"
    except OSError as exc:
        return f"the host name {host!r} does not resolve ({exc.strerror or exc})"
    own = await _own_addresses(api)
    for address in addresses:
        if address.is_loopback or address.is_unspecified or address in own:
            return f"the URL points at this api itself ({address} port {port})"
    return None
