"""The perf profile's attribution (``bench/perf_profile.py``): pure parsing of ``perf script``
output, no perf needed."""

from __future__ import annotations

from bench.perf_profile import profile_of, report, short_path

# three samples as ``perf script`` prints them (with trampolines, DWARF call graphs)
SCRIPT = """\
python 25853 53719.106808:    1003009 cpu-clock:ppp:
\t          29c320 [unknown] (/usr/lib/x86_64-linux-gnu/libcrypto.so.3)
\t          1a2b3c EVP_DigestUpdate+0x1c (/usr/lib/x86_64-linux-gnu/libcrypto.so.3)
\t    7f10511f5700 py::make_stamp_of_parts:/work/main/mailjournal/stamp.py+0x5 (/tmp/perf-1.map)
\t    7f10511f5800 py::build_report:/work/main/delivery/report.py+0x5 (/tmp/perf-1.map)

python 25857 53719.108634:    1003009 cpu-clock:ppp:
\tffffffff81424688 exit_to_user_mode_loop+0x98 ([kernel.kallsyms])
\t           fc26f __poll+0x4f (/usr/lib/x86_64-linux-gnu/libc.so.6)

python 25860 53719.138922:    1003009 cpu-clock:ppp:
\t          1e3820 _Py_INCREF (inlined)
\t          1e3820 PyType_IsSubtype+0x30 (/root/.pyenv/versions/3.12.1/lib/libpython3.12.so.1.0)
\t    7f10511f5900 py::SMTP.send:/usr/lib/python3.12/smtplib.py+0x5 (/tmp/perf-1.map)
"""


def test_each_sample_is_charged_to_its_innermost_python_frame() -> None:
    p = profile_of(SCRIPT.splitlines())
    assert p.samples == 3
    assert p.by_function == {
        "make_stamp_of_parts (mailjournal/stamp.py)": 1,  # not build_report, its caller
        "<no Python frame: [kernel.kallsyms]>": 1,
        "SMTP.send (python3.12/smtplib.py)": 1,
    }
    # an inlined leaf counts for the binary it is inlined into
    assert p.by_leaf == {"libcrypto.so.3": 1, "[kernel.kallsyms]": 1, "libpython3.12.so.1.0": 1}


def test_the_report_gives_shares_of_the_stage_samples() -> None:
    text = report("delivery", profile_of(SCRIPT.splitlines()), top=5)
    assert "## delivery: 3 samples" in text
    assert "| `make_stamp_of_parts (mailjournal/stamp.py)` | 33.3 % |" in text
    assert report("relay", profile_of([]), top=5) == "## relay: no samples\n"


def test_paths_are_shown_relative_to_the_checkout() -> None:
    from bench.perf_profile import ROOT

    assert short_path(f"{ROOT}/ingest/server.py+0x5") == "ingest/server.py"
    assert short_path("/usr/lib/python3.12/asyncio/runners.py+0x5") == "asyncio/runners.py"
