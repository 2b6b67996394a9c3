"""A private Postfix instance for the benchmarks: the peer mailjournal is compared with.

Everything lives under one temporary directory (config_directory, queue_directory,
data_directory, its own log file) and listens on its own loopback port: the system's Postfix
(``/etc/postfix``, port 25) is never read, written, started or stopped. It journals the way a
Postfix admin would, with ``recipient_bcc_maps`` (every recipient -> one journal address), and
relays both the original and the journal copy to a smart host (``smtp-sink`` in the benchmark).

Its ``maillog_file`` gives, per delivered recipient, ``delay=`` (receipt to the smart host's 250):
the peer's end-to-end latency, and the count of ``status=sent`` lines tells when all is delivered.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

from bench.common import POSTFIX, wait_for, wait_port

JOURNAL_ADDRESS = "journal@journal.example"
_SENT = re.compile(rb" to=<([^>]*)>.* delay=([0-9.]+),.* status=sent ")

MASTER_CF = """\
{host}:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def main_cf(base: Path, port: int, relay_port: int, journal: str | None, extra: str = "") -> str:
    return f"""\
compatibility_level = 3.6
config_directory = {base}/etc
queue_directory = {base}/queue
data_directory = {base}/data
maillog_file = {base}/maillog
maillog_file_prefixes = {base}
mail_owner = postfix
setgid_group = postdrop
myhostname = peer.bench.example
mydomain = bench.example
myorigin = $myhostname
mydestination =
local_recipient_maps =
relay_domains =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:{relay_port}
# journaling, the Postfix way: every recipient gets a BCC to the journal address (None: off)
recipient_bcc_maps = {"static:" + journal if journal else ""}
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtputf8_enable = no
alias_maps =
alias_database =
biff = no
# the load generator opens 20 sessions from one address; Postfix's defaults suit that
smtpd_client_connection_count_limit = 0
smtpd_client_message_rate_limit = 0
default_destination_concurrency_limit = 20
smtp_destination_concurrency_limit = 20
message_size_limit = 0
{extra}"""


class PostfixPeer:
    """``PostfixPeer(dir, port, relay_port).start()`` ... ``.stop()``; ``sent()`` parses the log."""

    def __init__(
        self,
        base: Path,
        port: int,
        relay_port: int,
        journal: str | None = JOURNAL_ADDRESS,
        *,
        main_extra: str = "",
        master_extra: str = "",
    ):
        # main_extra/master_extra: more main.cf lines and master.cf services (the tests' filter)
        self.base = Path(base).resolve()
        self.port = port
        self.relay_port = relay_port
        self.journal = journal
        self.main_extra = main_extra
        self.master_extra = master_extra
        self.etc = self.base / "etc"
        self.log = self.base / "maillog"
        self.started = False

    def _postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [POSTFIX, "-c", str(self.etc), *args], capture_output=True, text=True, timeout=120
        )

    def start(self) -> PostfixPeer:
        owner = pwd.getpwnam("postfix")  # the Debian package's user; KeyError when missing
        grp.getgrnam("postdrop")
        self.etc.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)  # Postfix's daemons (user postfix) must reach queue and data
        (self.base / "data").mkdir(exist_ok=True)
        os.chown(self.base / "data", owner.pw_uid, owner.pw_gid)
        (self.base / "queue").mkdir(exist_ok=True)
        (self.etc / "main.cf").write_text(
            main_cf(self.base, self.port, self.relay_port, self.journal, self.main_extra)
        )
        (self.etc / "master.cf").write_text(
            MASTER_CF.format(host="127.0.0.1", port=self.port) + self.master_extra
        )
        # postfix-files describes the directories `postfix check/start` creates and owns
        (self.etc / "postfix-files").write_text(Path("/etc/postfix/postfix-files").read_text())
        with contextlib.suppress(FileNotFoundError):
            shutil_copy(Path("/etc/postfix/dynamicmaps.cf"), self.etc / "dynamicmaps.cf")
        self.log.touch()
        res = self._postfix("start")
        if res.returncode != 0:
            tail = self.log.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"postfix start failed: {res.stdout}{res.stderr}{tail}")
        self.started = True
        wait_port(self.port, 30)
        return self

    def master_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.base / "queue" / "pid" / "master.pid").read_text().split()[0])
        return None

    def queue_empty(self) -> bool:
        q = self.base / "queue"
        return not any(
            any(p.is_file() for p in (q / d).rglob("*"))
            for d in ("incoming", "active", "deferred", "maildrop", "hold")
            if (q / d).exists()
        )

    def log_offset(self) -> int:
        return self.log.stat().st_size

    def sent(self, offset: int = 0) -> list[tuple[str, float]]:
        """(recipient, delay seconds) of every ``status=sent`` line after ``offset``."""
        with open(self.log, "rb") as f:
            f.seek(offset)
            data = f.read()
        return [(m.group(1).decode(), float(m.group(2))) for m in _SENT.finditer(data)]

    def stop(self) -> None:
        if not self.started:
            return
        res = self._postfix("stop")
        pid = self.master_pid()
        if res.returncode != 0 and pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        wait_for(lambda: self.master_pid() is None or not _alive(self.master_pid()), 30)
        self.started = False

    def __enter__(self) -> PostfixPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    return Path(f"/proc/{pid}").exists()


def shutil_copy(src: Path, dst: Path) -> None:
    dst.write_bytes(src.read_bytes())


@contextlib.contextmanager
def postfix_peer(base: Path, port: int, relay_port: int) -> Iterator[PostfixPeer]:
    peer = PostfixPeer(base, port, relay_port)
    try:
        yield peer.start()
    finally:
        peer.stop()
