"""Sandbox backends: the protocol's behaviour (stdin, marker, per-test outcomes, limits,
classification), the process backend's refusals, the docker pool's hygiene, and the
``dllm-bench sandbox`` CLI. Real bubblewrap and a real Docker engine; skipped with the
reason where either is absent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from dllm_bench.sandboxes.base import Limits, build_test_program, classify, new_marker, parse_test_lines, sandbox_key

from .conftest import open_sandbox_or_skip

FAST = Limits(wall_time_s=5.0, cpu_time_s=2.0)




def test_stdin_is_a_real_file_descriptor(sandbox):
    prog = "import os, sys\ndata = sys.stdin.read()\nprint(data.upper(), end='')\nprint(os.read(0, 10))\n"
    out = sandbox.run(prog, stdin="line one\nline two\n", limits=FAST)
    assert out.status == "passed" and out.exit_code == 0
    assert out.stdout == "LINE ONE\nLINE TWO\nb''\n"


def test_stdio_program_may_exit_normally_without_marker(sandbox):
    out = sandbox.run("import sys\nprint(int(input()) * 2)\nsys.exit(0)\n", stdin="21\n", limits=FAST)
    assert (out.status, out.stdout) == ("passed", "42\n")


def test_marker_is_printed_after_the_program_and_stripped(sandbox):
    marker = new_marker()
    out = sandbox.run("print('hi', end='')", limits=FAST, success_marker=marker)
    assert out.status == "passed" and out.marker_seen
    assert marker not in out.stdout and out.stdout == "hi"


def test_per_test_outcomes_and_stop_on_failure(sandbox):
    sol = "def add(a, b):\n    return a + b if a < 5 else 0\n"
    tests = [(f"t{i}", f"assert add({i}, 1) == {i + 1}") for i in range(3, 8)]
    out = sandbox.run(build_test_program(sol, tests), limits=FAST, success_marker=new_marker())
    recs, rest = parse_test_lines(out.stdout)
    assert out.status == "failed" and not out.marker_seen
    assert [r["status"] for r in recs] == ["passed", "passed", "failed", "failed", "failed"]
    assert "__dllm_test__" not in rest
    out = sandbox.run(build_test_program(sol, tests, stop_on_failure=True), limits=FAST, success_marker=new_marker())
    recs, _ = parse_test_lines(out.stdout)
    assert [r["status"] for r in recs] == ["passed", "passed", "failed"]
    good = sandbox.run(build_test_program("def add(a, b):\n    return a + b\n", tests), limits=FAST,
                       success_marker=new_marker())
    assert good.status == "passed"
    assert [r["status"] for r in parse_test_lines(good.stdout)[0]] == ["passed"] * 5


def test_no_tests_is_not_a_pass(sandbox):
    out = sandbox.run(build_test_program("x = 1", []), limits=FAST, success_marker=new_marker())
    assert out.status == "failed"


def test_syntax_error_is_a_runtime_error(sandbox):
    out = sandbox.run(build_test_program("def f(:\n", [("t", "assert True")]), limits=FAST,
                      success_marker=new_marker())
    assert out.status == "runtime-error" and "SyntaxError" in out.stderr


def test_cpu_limit_is_enforced_per_process(sandbox):
    out = sandbox.run("while True:\n    pass\n", limits=Limits(wall_time_s=30, cpu_time_s=1))
    assert out.status == "timeout"
    assert out.details.startswith("CPU-time limit") or out.exit_code is None


def test_thread_started_by_a_stdio_program_is_joined(sandbox):
    prog = ("import threading, sys\nsys.setrecursionlimit(10**6)\nthreading.stack_size(1 << 26)\n"
            "def main():\n    print(sum(range(int(input()) + 1)))\n"
            "threading.Thread(target=main).start()\n")
    out = sandbox.run(prog, stdin="100\n", limits=FAST)
    assert (out.status, out.stdout) == ("passed", "5050\n")


def test_describe_and_key(sandbox):
    d = sandbox.describe()
    assert d["backend"] == sandbox.name and d["isolation"] and d["python_version"].startswith("3.")
    key = sandbox_key(sandbox, FAST)
    from dllm_bench.schema import SandboxKey

    SandboxKey.model_validate(key)
    assert key["limits"]["wall_time_s"] == 5.0


# ------------------------------------------------------------------ classification (pure)
def test_classify_statuses():
    m = new_marker()
    ok = classify(exit_code=0, stdout=f"x\n{m}\n".encode(), stderr=b"", wall_s=0.1, marker=m, killed=None,
                  truncated=False)
    assert ok.status == "passed" and ok.stdout == "x"
    early = classify(exit_code=0, stdout=b"x\n", stderr=b"", wall_s=0.1, marker=m, killed=None, truncated=False)
    assert early.status == "failed"
    assert classify(exit_code=152, stdout=b"", stderr=b"", wall_s=1, marker=None, killed=None,
                    truncated=False).status == "timeout"
    assert classify(exit_code=102, stdout=b"", stderr=b"", wall_s=1, marker=None, killed=None,
                    truncated=False).status == "memory"
    assert classify(exit_code=139, stdout=b"", stderr=b"", wall_s=1, marker=None, killed=None,
                    truncated=False).details == "killed by SIGSEGV"
    assert classify(exit_code=None, stdout=b"", stderr=b"", wall_s=1, marker=m, killed="output-limit",
                    truncated=True).status == "output-limit"


def test_limits_reject_unknown_fields():
    with pytest.raises(ValidationError):
        Limits(wall_time=3)  # type: ignore[call-arg]


# ------------------------------------------------------------------ process backend specifics
def test_process_refuses_without_bubblewrap(monkeypatch):
    from dllm_bench.sandboxes.base import SandboxUnavailable
    from dllm_bench.sandboxes.process import ProcessSandbox

    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SandboxUnavailable, match="bubblewrap.*apt-get install bubblewrap.*--unsafe-no-isolation"):
        ProcessSandbox()
    ok, why = ProcessSandbox.available()
    assert not ok and "bubblewrap" in why


def test_process_rejects_shim_interpreter(tmp_path):
    from dllm_bench.sandboxes.base import SandboxUnavailable
    from dllm_bench.sandboxes.process import ProcessSandbox

    shim = tmp_path / "python3"
    shim.write_text("#!/bin/sh\nexec python3 \"$@\"\n")
    shim.chmod(0o755)
    with pytest.raises(SandboxUnavailable, match="script"):
        ProcessSandbox(python=str(shim))


def test_unsafe_no_isolation_is_opt_in_and_labelled():
    from dllm_bench.sandboxes.process import ProcessConfig, ProcessSandbox

    assert ProcessConfig().unsafe_no_isolation is False
    sb = ProcessSandbox(unsafe_no_isolation=True)
    assert sb.describe()["isolation"].startswith("NONE")
    out = sb.run("print(input())", stdin="still runs\n", limits=FAST)
    assert (out.status, out.stdout) == ("passed", "still runs\n")


def test_process_layout_binds_only_interpreter_files():
    from dllm_bench.sandboxes.process import ProcessSandbox

    try:
        sb = ProcessSandbox()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(str(exc))
    for b in sb.layout["binds"]:
        assert not b.startswith(("/home", "/root", "/etc", "/work", "/tmp", "/var")), b
    out = sb.run("import os\nprint(sorted(os.listdir('/')))", limits=FAST)
    assert set(eval(out.stdout)) <= {"bin", "dev", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "tmp",
                                     "usr", "work"}


# ------------------------------------------------------------------ docker pool specifics
def test_docker_replaces_a_container_with_leftover_processes():
    sb = open_sandbox_or_skip("docker")
    try:
        daemon = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    os.close(1); os.close(2)\n"
                  "    time.sleep(300)\n    os._exit(0)\nprint('parent done')\n")
        out = sb.run(daemon, limits=FAST)
        assert out.status == "passed"
        after = sb.run("import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))",
                       limits=FAST)
        pids = json.loads(after.stdout)
        # a fresh container: docker-init (1), sleep, and this runner only
        assert len(pids) == 3, pids
        leftovers = sb.run("import os\nprint(os.listdir('/work'), os.listdir('/tmp'))", limits=FAST)
        assert leftovers.stdout.strip() == "[] []"
    finally:
        sb.close()


def test_docker_close_removes_its_containers():
    sb = open_sandbox_or_skip("docker")
    sb.warm(FAST)
    ids = set(sb._all)
    assert ids
    sb.close()
    import docker

    names = {c.id for c in docker.from_env().containers.list(all=True)}
    assert not ids & names


# ------------------------------------------------------------------ CLI
def test_cli_check_json():
    exe = Path(sys.executable).parent / "dllm-bench"
    res = subprocess.run([str(exe), "sandbox", "check", "--backend", "process", "--json"], capture_output=True,
                         text=True, timeout=120)
    rows = json.loads(res.stdout)
    assert rows[0]["backend"] == "process"
    if rows[0]["available"]:
        assert res.returncode == 0
        assert {p["probe"]: p["ok"] for p in rows[0]["probes"]} == {"hello": True, "premature-exit": True,
                                                                      "network": True}
    else:
        assert res.returncode == 1


def test_docker_prunes_containers_of_dead_harnesses():
    sb = open_sandbox_or_skip("docker")
    try:
        import docker

        from dllm_bench.sandboxes.docker import IMAGE, LABEL, OWNER_LABEL, prune_stale

        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        client = docker.from_env()
        c = client.containers.run(IMAGE, ["sleep", "infinity"], detach=True, network_mode="none",
                                  labels={LABEL: "1", OWNER_LABEL: f"{__import__('socket').gethostname()}:{dead.pid}"})
        sb.warm(FAST)
        removed = prune_stale(client)
        assert c.id in removed
        assert not set(sb._all) & set(removed)  # our own (live) containers stay
    finally:
        sb.close()
