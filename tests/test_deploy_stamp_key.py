"""The Kubernetes stages that make or honour the loop-guard stamp read its key from a Secret
mounted as a file (the configuration refuses to start them without it)."""

from __future__ import annotations

from pathlib import PurePosixPath

from mailjournal.config import load_config
from tests.test_deploy_kubernetes import K8S, documents


def test_stamp_key_is_a_file_of_a_mounted_secret_in_every_stage_that_needs_it() -> None:
    cfg = load_config(K8S / "mailjournal.toml")
    assert cfg.journal.active
    key = cfg.journal.stamp_secret_file
    assert key is not None
    key_dir = PurePosixPath(key).parent
    needing = {"journal", "deliver", "audit"}
    seen = set()
    for dep in (d for d in documents() if d["kind"] == "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        command = container["args"][0]
        if command not in needing:
            continue
        seen.add(command)
        mounts = {PurePosixPath(m["mountPath"]): m["name"] for m in container["volumeMounts"]}
        assert key_dir in mounts, f"{command}: nothing mounted at {key_dir}"
        volume = next(v for v in pod["volumes"] if v["name"] == mounts[key_dir])
        assert "secret" in volume, f"{command}: {key_dir} is not a Secret"
    assert seen == needing
