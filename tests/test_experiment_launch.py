"""lpmn-experiment --launcher local and slurm on a tiny synthetic grid (2 folds x rows LPMN-8 and LPMN-8-4,
fbank, one epoch; 5 jobs: the feature cache, 2 trainings, 2 probe jobs after their LPMN-8).

Each launcher, for real (worker processes started by submitit; jobs on the one-node SLURM that
scripts/slurm_up.sh starts): a run preempted mid-way (SIGUSR2, which SLURM sends before a time limit;
`scancel --signal=USR2`) is requeued by submitit's checkpointing hook and resumes its checkpoint within
the launch; a run killed mid-way (scancel; SIGINT for a local worker, as submitit's cancel sends) makes
the launch end unfinished; a second launch while it ran submitted nothing; the
rerun resubmits only the killed run and its probes, the run resumes its checkpoint, and the results
equal the sequential launcher's; a third launch submits nothing. The SLURM test is skipped when no SLURM
answers here, and fails instead when LPMN_REQUIRE_SLURM=1 (CI).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

import lpmn_fast.experiment as experiment

pytest.importorskip("submitit", reason="submitit (a dependency since the launchers) is not installed: rerun "
                                       "scripts/setup.sh")
from lpmn_fast.launch.backends import slurm_answers  # noqa: E402
from lpmn_fast.launch.engine import job_states, read_records  # noqa: E402
from lpmn_fast.launch.jobs import HOLD_ENV, JobLock, JobSpec  # noqa: E402

HELD = "fold-1/lpmn-K8"  # the run killed mid-way: two of its four steps done, a checkpoint after step 2
PREEMPTED = "fold-2/lpmn-K8"  # the run preempted mid-way (SIGUSR2, as SLURM signals before a time limit)


def _args(cache: Path, out: Path) -> list[str]:
    return ["--data", "synthetic", "--synthetic-utterances-per-speaker", "4", "--split", "loso", "--fold", "1,2",
            "--rows", "lpmn,lpmn-ps", "--k", "8", "--k-prime", "4", "--cache-dir", str(cache), "--epochs", "1",
            "--fbank-mel-bins", "16", "--encoder-hidden", "16", "--batch-size", "8", "--tau", "0.2", "--lr", "0.01",
            "--kmeans-frames", "500", "--probe-epochs", "2", "--checkpoint-every", "2", "--no-progress",
            "--threads", "1", "--out", str(out)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def sequential(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("sequential") / "out"
    assert experiment.main(_args(cache, out)) == 0
    return out


def _same_results(out: Path, reference: Path) -> None:
    """results.json's table and every run's results equal the sequential launcher's (wall times aside)."""
    got, want = (json.loads((d / "results.json").read_text()) for d in (out, reference))
    assert got["complete"] and got["table"] == want["table"]
    assert [r["name"] for r in got["table"]["rows"]] == ["LPMN-8", "LPMN-8-4"]
    untimed = lambda runs: {f: {n: {k: v for k, v in r.items() if k not in ("seconds", "run_dir")}  # noqa: E731
                                for n, r in rows.items()} for f, rows in runs.items()}
    assert untimed(got["runs"]) == untimed(want["runs"])
    for file in (f"{PREEMPTED}/metrics.json", f"{PREEMPTED}/probe-K4.json", f"{HELD}/metrics.json",
                 f"{HELD}/probe-K4.json"):
        a, b = (json.loads((d / file).read_text()) for d in (out, reference))
        for key in ("valid", "test", "best_epoch"):
            assert a[key] == b[key], (file, key)
        if "history" in a:
            strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
            assert strip(a["history"]) == strip(b["history"]), file


def _wait_for(predicate, what: str, timeout: float = 240.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _holding(out: Path, key: str) -> bool:
    record = read_records(out).get(key)
    return record is not None and Path(record["stderr"]).is_file() and "holding" in Path(record["stderr"]).read_text()


def _others_done(out: Path) -> bool:
    """Every job that does not wait for HELD is done (the preempted run and its probes included)."""
    return (out / PREEMPTED / "probe-K4.json").is_file()


def _kill_resume_rerun(out: Path, args: list[str], reference: Path, kill, preempt, monkeypatch, capsys) -> None:
    monkeypatch.setenv(HOLD_ENV, f"{HELD}:2,{PREEMPTED}:2")
    first: dict = {}
    thread = threading.Thread(target=lambda: first.update(rc=experiment.main(args)))
    thread.start()
    try:
        _wait_for(lambda: _holding(out, PREEMPTED), f"{PREEMPTED} to hold mid-run")
        preempt(read_records(out)[PREEMPTED]["id"])  # submitit's hook requeues it; it resumes, same job id
        _wait_for(lambda: _holding(out, HELD) and _others_done(out), f"{HELD} to hold, the rest to finish")
        running = read_records(out)
        assert running[PREEMPTED]["attempt"] == 1
        assert "LPMN-8: resuming its checkpoint" in Path(running[PREEMPTED]["stderr"]).read_text()
        # a second launch of the same folder meanwhile: reports the running job, submits nothing
        assert experiment.main(args + ["--no-wait"]) == 0
        assert read_records(out) == running
        assert f"{HELD}: running (" in capsys.readouterr().err
        kill(running[HELD]["id"])
    finally:
        thread.join(timeout=300)
    assert not thread.is_alive() and first["rc"] == 1  # the launch ended unfinished
    run = out / HELD
    assert (run / "checkpoints" / "last.json").is_file() and not (run / "metrics.json").exists()
    killed = read_records(out)
    monkeypatch.delenv(HOLD_ENV)

    capsys.readouterr()
    assert experiment.main(args) == 0  # the rerun: reports the failure, resubmits it, resumes
    err = capsys.readouterr().err
    assert f"{HELD}: failed (" in err and "3 of 5 jobs finished earlier" in err
    after = read_records(out)
    assert {k for k in after if after[k] != killed.get(k)} == {HELD, f"{HELD}/probes"}  # nothing else submitted
    assert after[HELD]["attempt"] == 2
    assert "LPMN-8: resuming its checkpoint" in Path(after[HELD]["stderr"]).read_text()
    _same_results(out, reference)

    assert experiment.main(args) == 0  # everything in: a third launch submits nothing
    assert read_records(out) == after
    _same_results(out, reference)
    assert experiment.main(["--status", str(out)]) == 0
    table = capsys.readouterr().out
    assert "0 failed" in table and "5 done" in table and "LPMN-8-K'" in table


def _preempt_local(pid: str) -> None:
    """SIGUSR2 to the worker (the controller's child), as submitit's local controller signals before its timeout."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, children
    os.kill(int(children[0]), signal.SIGUSR2)


def test_local_launcher_resumes_killed_and_preempted_runs_and_equals_sequential(tmp_path, cache, sequential,
                                                                                monkeypatch, capsys):
    args = _args(cache, tmp_path / "out") + ["--launcher", "local", "--max-parallel", "2", "--devices", "cpu",
                                              "--poll-seconds", "1"]
    _kill_resume_rerun(tmp_path / "out", args, sequential, lambda pid: os.kill(int(pid), signal.SIGINT),
                       _preempt_local, monkeypatch, capsys)


def _require_slurm() -> None:
    if slurm_answers():
        return
    reason = ("no SLURM controller answers here (sinfo); start a one-node SLURM on this machine with "
              "`sudo bash scripts/slurm_up.sh` (stop it with scripts/slurm_down.sh)")
    if os.environ.get("LPMN_REQUIRE_SLURM") == "1":
        pytest.fail(f"LPMN_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


def test_slurm_launcher_resumes_scancelled_and_preempted_runs_and_equals_sequential(tmp_path, cache, sequential,
                                                                                    monkeypatch, capsys):
    _require_slurm()
    args = _args(cache, tmp_path / "out") + ["--launcher", "slurm", "--slurm-gpus-per-job", "0",
                                              "--slurm-cpus-per-job", "1", "--slurm-time", "20", "--poll-seconds", "1"]
    _kill_resume_rerun(tmp_path / "out", args, sequential,
                       lambda job_id: subprocess.run(["scancel", job_id], check=True),
                       lambda job_id: subprocess.run(["scancel", "--signal=USR2", job_id], check=True),
                       monkeypatch, capsys)


def test_one_job_never_runs_twice_at_once(tmp_path):
    with JobLock(tmp_path / ".job.lock"):
        with pytest.raises(RuntimeError, match="another worker runs this job now"):
            with JobLock(tmp_path / ".job.lock"):
                pass
    with JobLock(tmp_path / ".job.lock"):  # released when the first ended
        pass


def test_job_states_from_files_records_and_scheduler(tmp_path):
    done = tmp_path / "done.json"
    done.write_text("{}")
    specs = [JobSpec("features", "features", "features", outputs=(str(done),)),
             JobSpec("a", "train", "AP", outputs=(str(tmp_path / "a.json"),), after="features"),
             JobSpec("b", "train", "MP", outputs=(str(tmp_path / "b.json"),), after="features"),
             JobSpec("c", "train", "LPMN-8", outputs=(str(tmp_path / "c.json"),), after="features"),
             JobSpec("c/probes", "probe", "LPMN-8-K'", outputs=(str(tmp_path / "p.json"),), after="c")]
    records = {"a": {"id": "11"}, "b": {"id": "12"}}
    states = job_states(specs, records, {"11": "running"})
    assert states == {"features": "done", "a": "running", "b": "failed", "c": "missing", "c/probes": "waiting"}
