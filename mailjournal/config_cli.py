"""``mailjournal config check FILE``: print the effective configuration or the errors (exit 0/2),
and (on stderr, beside the verdict) the delivery route each journal and NDR address takes."""

from __future__ import annotations

import argparse
import json
import sys

from mailjournal.config import Config, SmartHostConfig, load_config_or_report, masked_dump
from mailjournal.exits import EXIT_CONFIG, EXIT_OK


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="validate FILE and print the effective configuration")
    check.add_argument("file")
    check.add_argument("--quiet", "-q", action="store_true", help="print nothing when valid")


def _hop(hop: SmartHostConfig, mx: bool = False) -> str:
    where = "MX of the address's domain" if mx else f"{hop.host}:{hop.port}"
    tls = f"starttls {hop.starttls}"
    if hop.starttls != "off":
        tls += ", verified" if hop.tls_verify else ", NOT verified"
        if hop.ca_file:
            tls += f" against {hop.ca_file}"
        if hop.tls_fingerprints:
            tls += f", {len(hop.tls_fingerprints)} pinned fingerprint(s)"
        if hop.client_cert_file:
            tls += ", client certificate"
    if hop.authenticates:
        tls += ", AUTH"
    return f"{where} ({tls})"


def route_lines(config: Config) -> list[str]:
    """One line per journal and NDR address of the configuration: the route its copies take."""
    delivery = config.delivery
    lines = ["delivery routes:"]
    seen: set[tuple[str, str]] = set()
    for name in ("inbound", "outbound", "internal"):
        d = config.journal.direction(name)
        if not d.active:
            continue
        roles = [("journal", a) for a in d.addresses]
        roles.append(("NDR", d.ndr_address or ""))
        for role, address in roles:
            if not address or (role, address) in seen:
                continue
            seen.add((role, address))
            route = delivery.route_for(address)
            how = (
                f"route {route.name}: {_hop(route, route.mx)}"
                if route is not None
                else f"smart host: {_hop(delivery.smart_host)}"
            )
            lines.append(f"  {name} {role} {address} -> {how}")
        if d.recipient_attribute:
            lines.append(
                f"  {name} per-recipient addresses ({d.recipient_attribute}) -> by their own "
                "address at send time"
            )
    return lines


def main(args: argparse.Namespace) -> int:
    config = load_config_or_report(args.file)
    if config is None:
        return EXIT_CONFIG
    if not args.quiet:
        print(json.dumps(masked_dump(config), indent=2, sort_keys=False))
    if not args.quiet:
        for line in route_lines(config):
            print(line, file=sys.stderr)
    print(f"{args.file}: configuration is valid", file=sys.stderr)
    return EXIT_OK
