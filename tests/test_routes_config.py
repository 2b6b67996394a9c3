"""``[[delivery.routes]]`` and fan-out addresses in the configuration (pure), and what
``mailjournal config check`` and the delivery stage say about them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mailjournal.config import ConfigError, file_problems, load_config_dict
from mailjournal.config_cli import route_lines

ROOT = Path(__file__).resolve().parents[1]
FP = "AB:" * 31 + "CD"


def config(routes: list[dict[str, Any]], **journal: Any) -> Any:
    return load_config_dict(
        {
            "organization": {"accepted_domains": ["corp.example"]},
            "journal": {
                "inbound": {
                    "address": "journal@corp.example",
                    "ndr_address": "journal-ndr@corp.example",
                    **journal,
                }
            },
            "delivery": {"routes": routes},
        }
    )


def errors(routes: list[dict[str, Any]]) -> str:
    with pytest.raises(ConfigError) as info:
        config(routes)
    return "\n".join(info.value.errors)


def test_the_route_of_an_address_exact_then_longest_domain_then_smart_host() -> None:
    cfg = config(
        [
            {"name": "vip", "match": ["Boss@Tenant.Archive.example"], "host": "vip.example"},
            {"name": "tenant", "match": ["tenant.archive.example"], "host": "t.example"},
            {"name": "cloud", "match": ["*.archive.example"], "host": "c.example"},
            {"name": "deep", "match": ["*.eu.archive.example"], "host": "d.example"},
        ]
    ).delivery

    def name(address: str) -> str | None:
        route = cfg.route_for(address)
        return route.name if route is not None else None

    assert name("boss@tenant.archive.example") == "vip"
    assert name("BOSS@TENANT.ARCHIVE.EXAMPLE") == "vip"
    assert name("other@tenant.archive.example") == "tenant"
    assert name("j@x.archive.example") == "cloud"
    assert name("j@a.eu.archive.example") == "deep"
    assert name("j@archive.example") is None  # *.domain is below the domain only
    assert name("journal@corp.example") is None  # the smart host


def test_starttls_is_required_by_default_for_routes_leaving_the_organisation() -> None:
    routes = config(
        [
            {"name": "cloud", "match": ["*.archive.example"], "host": "c.example"},
            {"name": "onprem", "match": ["archive@corp.example"], "host": "a.corp.example"},
            {
                "name": "onprem-tls",
                "match": ["secure@corp.example"],
                "host": "s.corp.example",
                "starttls": "opportunistic",
            },
        ]
    ).delivery.routes
    assert [(r.name, r.starttls, r.tls_verify) for r in routes] == [
        ("cloud", "required", True),
        ("onprem", "off", True),
        ("onprem-tls", "opportunistic", True),
    ]


def test_fan_out_addresses_are_journal_addresses_of_the_direction() -> None:
    cfg = config([], additional_addresses=["journal@tenant.archive.example"])
    inbound = cfg.journal.inbound
    assert inbound.addresses == ["journal@corp.example", "journal@tenant.archive.example"]
    assert "journal@tenant.archive.example" in cfg.journal.protected_addresses()
    only_extra = config([], address=None, additional_addresses=["a@b.example"]).journal.inbound
    assert only_extra.active and only_extra.addresses == ["a@b.example"]


def test_fingerprints_are_normalised_and_checked() -> None:
    route = config(
        [{"name": "c", "match": ["x.example"], "host": "h.example", "tls_fingerprints": [FP]}]
    ).delivery.routes[0]
    assert route.tls_fingerprints == ["ab" * 31 + "cd"]
    text = errors(
        [{"name": "c", "match": ["x.example"], "host": "h.example", "tls_fingerprints": ["ab"]}]
    )
    assert "delivery.routes.0.tls_fingerprints" in text and "SHA-256" in text


@pytest.mark.parametrize(
    ("route", "wanted"),
    [
        ({"name": "c", "match": ["x.example"], "colour": "blue"}, "delivery.routes.0.colour"),
        ({"name": "Bad Name", "match": ["x.example"]}, "delivery.routes.0.name"),
        ({"name": "c", "match": []}, "delivery.routes.0.match"),
        ({"name": "c", "match": ["not an address@"]}, "delivery.routes.0.match"),
        ({"name": "c", "match": ["x.example"], "concurrency": 0}, "delivery.routes.0.concurrency"),
        (
            {"name": "c", "match": ["x.example"], "client_key_file": "/k.pem"},
            "client_key_file needs client_cert_file",
        ),
        (
            {
                "name": "c",
                "match": ["x.example"],
                "credentials_file": "/c",
                "username": "u",
            },
            "credentials_file replaces username",
        ),
        (
            {"name": "c", "match": ["x.example"], "starttls": "off", "tls_fingerprints": [FP]},
            "need starttls on",
        ),
    ],
)
def test_bad_routes_are_refused_naming_the_key(route: dict[str, Any], wanted: str) -> None:
    assert wanted in errors([route])


def test_two_routes_with_one_name_or_pattern_are_refused() -> None:
    same_name = [{"name": "c", "match": ["a.example"]}, {"name": "c", "match": ["b.example"]}]
    assert "delivery.routes.1.name: 'c' is used twice" in errors(same_name)
    same_pattern = [{"name": "a", "match": ["x.example"]}, {"name": "b", "match": ["X.example"]}]
    assert "delivery.routes.1.match: 'x.example' is also in route 'a'" in errors(same_pattern)


def test_unreadable_route_files_refuse_the_delivery_stage(tmp_path: Path) -> None:
    cfg = config(
        [
            {
                "name": "cloud",
                "match": ["*.archive.example"],
                "ca_file": str(tmp_path / "missing-ca.pem"),
                "client_cert_file": str(tmp_path),
                "credentials_file": str(tmp_path / "missing-credentials"),
            }
        ]
    )
    problems = "\n".join(file_problems(cfg, ["deliver"]))
    assert "delivery.routes.0.ca_file:" in problems and "no such file" in problems
    assert "delivery.routes.0.client_cert_file:" in problems and "not a file" in problems
    assert "delivery.routes.0.credentials_file:" in problems
    assert file_problems(cfg, ["ingest"]) == []  # only delivery reads them
    (tmp_path / "missing-credentials").write_text("only-a-password\n")
    problems = "\n".join(file_problems(cfg, ["deliver"]))
    assert "delivery.routes.0.credentials_file:" in problems
    assert "expected one 'username:password' line" in problems


def test_config_check_prints_the_route_of_every_journal_and_ndr_address(tmp_path: Path) -> None:
    cfg = config(
        [{"name": "cloud", "match": ["*.archive.example"], "host": "smtp.archive.example"}],
        additional_addresses=["journal@tenant.archive.example"],
    )
    assert route_lines(cfg) == [
        "delivery routes:",
        "  inbound journal journal@corp.example -> smart host: 127.0.0.1:25 (starttls off)",
        "  inbound journal journal@tenant.archive.example -> route cloud: "
        "smtp.archive.example:25 (starttls required, verified)",
        "  inbound NDR journal-ndr@corp.example -> smart host: 127.0.0.1:25 (starttls off)",
    ]
    path = tmp_path / "routes.toml"
    path.write_text(
        '[organization]\naccepted_domains = ["corp.example"]\n'
        '[journal.inbound]\naddress = "journal@corp.example"\n'
        'additional_addresses = ["journal@tenant.archive.example"]\n'
        'ndr_address = "journal-ndr@corp.example"\n'
        '[[delivery.routes]]\nname = "cloud"\nmatch = ["*.archive.example"]\n'
        'host = "smtp.archive.example"\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "mailjournal", "config", "check", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "journal@tenant.archive.example -> route cloud" in proc.stderr
