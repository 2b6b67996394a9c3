"""The canonical address form: every spelling of a journal/NDR address is one form, the form is
stable, and no input makes it raise (issue 14)."""

from __future__ import annotations

import idna
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailjournal.addresses import INVALID_PREFIX, canonical, has_routing_local_part
from tests.fixtures.config import make_config

CONFIG = make_config(
    {
        "organization": {"accepted_domains": ["corp.example", "köln.example"]},
        "journal": {
            "internal": {
                "enabled": True,
                "address": "journal-intern@xn--kln-sna.example",
                "ndr_address": "journal-ndr-intern@köln.example",
            }
        },
    }
)
PROTECTED = sorted(CONFIG.journal.protected_addresses())
KEYS = CONFIG.protected_keys()
DOTS = [".", "\u3002", "\uff0e", "\uff61"]  # full stop, ideographic, fullwidth, halfwidth


def _fullwidth(c: str) -> str:
    return chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c


@st.composite
def spelling(draw: st.DrawFn, address: str) -> str:
    """An equivalent spelling of ``address``: case, quoting and escapes, a +ext, fullwidth
    letters, other full stops, U-label or A-label, a trailing dot."""
    local, _, domain = address.rpartition("@")
    local = "".join(c.upper() if draw(st.booleans()) else c for c in local)
    if draw(st.booleans()):
        local += "+" + draw(st.text("abcXYZ019-_.=", max_size=8))
    if draw(st.booleans()):
        local = '"' + "".join("\\" + c if draw(st.booleans()) else c for c in local) + '"'
    if draw(st.booleans()):
        domain = idna.decode(domain) if domain.startswith("xn--") or ".xn--" in domain else domain
    elif not domain.isascii():
        domain = idna.encode(domain).decode()
    labels = domain.split(".")
    dots = [draw(st.sampled_from(DOTS)) for _ in labels]
    out = ""
    for label, dot in zip(labels, dots, strict=True):
        label = "".join(
            draw(st.sampled_from([c, c.upper(), _fullwidth(c), _fullwidth(c.upper())]))
            for c in label
        )
        out += label + dot
    if not draw(st.booleans()):
        out = out[:-1]  # the trailing dot is optional
    return f"{local}@{out}"


@given(st.sampled_from(PROTECTED).flatmap(lambda a: st.tuples(st.just(a), spelling(a))))
def test_every_spelling_of_a_protected_address_has_its_canonical_form(
    pair: tuple[str, str],
) -> None:
    address, variant = pair
    assert canonical(variant) == canonical(address)
    assert canonical(variant) in KEYS


@pytest.mark.parametrize(
    ("variant", "form"),
    [
        ('"journal-in"@corp.example', "journal-in@corp.example"),
        ('"jour\\nal-in"@corp.example', "journal-in@corp.example"),
        ("Journal-In+x@CORP.example", "journal-in@corp.example"),
        ("journal-in@" + "".join(map(_fullwidth, "corp.example")), "journal-in@corp.example"),
        ("journal-in@corp\u3002example", "journal-in@corp.example"),
        ("journal-in@corp\uff61example\u3002", "journal-in@corp.example"),
        ("journal-in@corp.example.", "journal-in@corp.example"),
        ("journal-intern@KÖLN.example", "journal-intern@xn--kln-sna.example"),
        ('"a b"@x.example', '"a b"@x.example'),  # not a dot-atom: stays quoted
        ('"a\\"b"@x.example', '"a\\"b"@x.example'),
        ("+list@x.example", "+list@x.example"),  # a name that starts with the delimiter
        ("a@[192.0.2.1]", "a@[192.0.2.1]"),
    ],
)
def test_canonical_examples(variant: str, form: str) -> None:
    assert canonical(variant) == form


def test_delimiter_is_configurable() -> None:
    assert canonical("a+b@x.example", "") == "a+b@x.example"
    assert canonical("a-b@x.example", "+-") == "a@x.example"
    assert canonical("a+b-c@x.example", "-") == "a+b@x.example"


@given(st.text(st.characters(exclude_categories=())))
def test_canonical_never_raises_and_is_idempotent(text: str) -> None:
    form = canonical(text)
    assert canonical(form) == form


@given(st.sampled_from(PROTECTED).flatmap(spelling))
def test_canonical_is_idempotent_on_spellings(variant: str) -> None:
    assert canonical(canonical(variant)) == canonical(variant)


@given(st.text(st.characters(exclude_categories=())))
def test_what_is_not_a_mailbox_matches_no_protected_address(text: str) -> None:
    form = canonical(text)
    if "@" not in text or text.endswith("@") or text.startswith("@"):
        assert form.startswith(INVALID_PREFIX)
    if form.startswith(INVALID_PREFIX):
        assert form not in KEYS


@given(st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,5}){0,2}", fullmatch=True))
def test_other_users_stay_other(local: str) -> None:
    for address in PROTECTED:
        if local != address.partition("@")[0]:
            assert canonical(f"{local}@corp.example") not in KEYS


@pytest.mark.parametrize(
    ("address", "routed"),
    [
        ("a%b.example@corp.example", True),
        ("b.example!a@corp.example", True),
        ('"a@b.example"@corp.example', True),
        ('"a\\@b.example"@corp.example', True),
        ("alice@corp.example", False),
        ('"alice smith"@corp.example', False),
    ],
)
def test_routing_local_parts(address: str, routed: bool) -> None:
    assert has_routing_local_part(address) is routed
