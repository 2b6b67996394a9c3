"""Exit statuses of every ``mailjournal`` command, in one place.

What runs a stage acts on the status, so each value means one thing everywhere:

======  ====================  ===================================================================
status  name                  meaning, who exits with it, what a supervisor does
======  ====================  ===================================================================
0       ``EXIT_OK``           done, or stopped by SIGTERM/SIGINT after finishing the work in flight
1       ``EXIT_FATAL``        a stage failed for good (Kafka producer fatal, fenced, events not
                              flushed at shutdown): ``mailjournal run`` and Kubernetes restart it
1       ``EXIT_KAFKA``        a command (``topics ensure``, ``dlq``) could not talk to Kafka
1       ``EXIT_GAPS``         ``audit``: the reconciliation found gaps (each one is named)
2       ``EXIT_CONFIG``       the configuration or the arguments are unusable (also a malformed
                              ``MAILJOURNAL_FAULT``): it would be refused again, so ``mailjournal
                              run`` stops instead of restarting the stage
2       ``EXIT_NO_VERDICT``   ``audit``: Kafka or the directory failed mid-run, so there is no
                              verdict (one line on stderr); never run under the supervisor
3       ``EXIT_DRIFT``        ``topics ensure``: existing topics differ from the configuration
3       ``EXIT_NOTHING``      ``dlq replay --id``: no open dead letter has that id
70      ``EXIT_STUCK``        the journal worker's watchdog: a Kafka transaction call hung past its
                              timeout (EX_SOFTWARE); restarted like 1
86      ``EXIT_FAULT``        an armed fault point's ``exit`` action (tests only); restarted like 1
130     ``EXIT_INTERRUPTED``  Ctrl-C before the command got going (128 + SIGINT, as shells do)
======  ====================  ===================================================================

1, 2 and 3 carry more than one name because different commands give them their meaning; the
supervisor only ever tells 2 apart from the rest, and it runs only the stages.
"""

from __future__ import annotations

__all__ = [
    "EXIT_CONFIG",
    "EXIT_DRIFT",
    "EXIT_FATAL",
    "EXIT_FAULT",
    "EXIT_GAPS",
    "EXIT_INTERRUPTED",
    "EXIT_KAFKA",
    "EXIT_NOTHING",
    "EXIT_NO_VERDICT",
    "EXIT_OK",
    "EXIT_STUCK",
]

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_KAFKA = 1
EXIT_GAPS = 1
EXIT_CONFIG = 2
EXIT_NO_VERDICT = 2
EXIT_DRIFT = 3
EXIT_NOTHING = 3
EXIT_STUCK = 70
EXIT_FAULT = 86
EXIT_INTERRUPTED = 130
