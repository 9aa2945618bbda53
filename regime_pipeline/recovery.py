"""Runs whose process died: found by the process ids they recorded, marked failed, their pool slots freed.

A run whose process is killed (``kill -9``, out of memory, a closed laptop) stays "started" in the
Dagster instance and keeps the `warehouse` pool slot its step had claimed, so every later
warehouse step waits for that slot for ever. Dagster's run monitoring cannot see it: it asks the
run launcher whether a run's worker is alive, and neither the default launcher (the UI) nor an
in-process run (``regime-pipeline run``, ``dagster asset materialize``) can answer. Every run does
record the processes that execute it (the engine event "Executing steps in process (pid: N)", and
one event per step subprocess); a run in progress all of whose processes are gone is dead.

:func:`free_dead_runs` marks such runs failed and frees their slots, saying so in the log. It runs
before every stage of ``regime-pipeline run`` and every ``check_every_s`` during one, and under the
daemon (``make ui``) in :data:`dead_run_sensor` every ``sensor_interval_s`` (``configs/runs.yaml``);
``regime-pipeline recover`` runs it once. Process ids only mean something on the machine that ran
the run, so it acts only on an instance whose run storage is local (SQLite, as ``dagster.yaml``
sets up), and a process id that now belongs to a process started after the run recorded it counts
as gone.

:func:`stop_on_signals` makes ``regime-pipeline run`` stop on Ctrl-C and SIGTERM even while Dagster
waits for a pool slot, a wait in which Dagster itself defers the signal indefinitely.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.events import DagsterEventType
from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter

from regime_pipeline.configs import run_settings

_log = logging.getLogger(__name__)

IN_PROGRESS = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
# Event types whose metadata carries the id of a process executing the run.
_PROCESS_EVENTS = {DagsterEventType.ENGINE_EVENT, DagsterEventType.STEP_WORKER_STARTED}
# A process that started this long after its id was recorded is another process with the same id.
_START_SLACK_S = 2.0


@dataclass(frozen=True)
class FreedRun:
    """A run whose slots were freed: dead (its processes gone) or finished with slots left over."""

    run_id: str
    job_name: str
    pids: tuple[int, ...]
    slots: int
    dead: bool


def is_local(instance: dg.DagsterInstance) -> bool:
    """Whether the instance's runs execute on this machine: its run storage is SQLite or in memory."""
    from dagster._core.storage.runs import InMemoryRunStorage, SqliteRunStorage

    return isinstance(instance.run_storage, SqliteRunStorage | InMemoryRunStorage)


def run_processes(instance: dg.DagsterInstance, run_id: str) -> dict[int, float]:
    """The processes that executed run `run_id`: process id -> when it was first recorded (epoch seconds)."""
    found: dict[int, float] = {}
    for entry in instance.all_logs(run_id, of_type=_PROCESS_EVENTS):
        metadata = getattr(entry.dagster_event.event_specific_data, "metadata", None) or {}
        pid = metadata.get("pid")
        if pid is None:
            continue
        value = int(getattr(pid, "value", pid))
        found.setdefault(value, entry.timestamp)
    return found


def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def process_gone(pid: int, recorded_at: float) -> bool:
    """Whether the process `pid`, recorded at `recorded_at`, no longer runs.

    Gone if no process has that id, if it is a zombie, or if the process with that id started after
    `recorded_at` (the id was reused). Where ``/proc`` is missing only the first test applies.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists, owned by another user
    try:
        # Fields after the command name: state is the 3rd field of the line, start time the 22nd.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    if fields[0] in ("Z", "X"):
        return True
    boot = _boot_time()
    if boot is None:
        return False
    started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return started > recorded_at + _START_SLACK_S


def slots_held(instance: dg.DagsterInstance) -> dict[str, int]:
    """Pool slots claimed (or queued for) per run id, over every pool."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return {}
    held: dict[str, int] = {}
    for pool in storage.get_concurrency_keys():
        info = storage.get_concurrency_info(pool)
        for slot in info.claimed_slots:
            held[slot.run_id] = held.get(slot.run_id, 0) + 1
        for step in info.pending_steps:
            held.setdefault(step.run_id, 0)
    return held


def free_dead_runs(
    instance: dg.DagsterInstance,
    log: Any | None = None,
    *,
    finished_grace_s: float | None = None,
    only_pid: int | None = None,
) -> list[FreedRun]:
    """Fail every run in progress whose processes are all gone, and free its pool slots; also free
    the slots a run that finished over `finished_grace_s` ago still holds. Logs a warning per run.

    :param only_pid: treat the runs executed by this process as dead (its own runs, when the
        process is about to exit without finishing them), and look at no other run
    :return: the runs whose slots were freed
    """
    log = log if log is not None else _log
    if not is_local(instance):
        return []
    grace = float(run_settings()["finished_grace_s"]) if finished_grace_s is None else finished_grace_s
    storage = instance.event_log_storage
    held = slots_held(instance)
    freed: list[FreedRun] = []
    for record in instance.get_run_records(filters=RunsFilter(statuses=IN_PROGRESS)):
        run = record.dagster_run
        processes = run_processes(instance, run.run_id)
        if not processes:
            continue  # not executing yet: Dagster's start timeout covers a run that never starts
        if only_pid is not None:
            if only_pid not in processes:
                continue
        elif not all(process_gone(pid, at) for pid, at in processes.items()):
            continue
        pids = tuple(sorted(processes))
        reason = (
            f"process {os.getpid()} stopped before the run finished"
            if only_pid is not None
            else f"its process{'es' if len(pids) > 1 else ''} {', '.join(map(str, pids))} died before the run finished"
        )
        instance.report_run_failed(run, f"Marked failed by regime_pipeline.recovery: {reason}; pool slots freed.")
        storage.free_concurrency_slots_for_run(run.run_id)
        slots = held.get(run.run_id, 0)
        freed.append(FreedRun(run.run_id, run.job_name, pids, slots, dead=True))
        log.warning(f"run {run.run_id} ({run.job_name}): {reason}; marked it failed and freed {slots} pool slot(s)")
    if only_pid is not None:
        return freed
    leftover = [run_id for run_id in held if run_id not in {f.run_id for f in freed}]
    if leftover:
        now = time.time()
        for record in instance.get_run_records(filters=RunsFilter(run_ids=leftover)):
            run = record.dagster_run
            if not run.is_finished or record.end_time is None or now - record.end_time < grace:
                continue
            storage.free_concurrency_slots_for_run(run.run_id)
            slots = held.get(run.run_id, 0)
            freed.append(FreedRun(run.run_id, run.job_name, (), slots, dead=False))
            log.warning(f"run {run.run_id} ({run.job_name}) ended {run.status.value} holding {slots} pool slot(s): freed them")
    return freed


@dg.sensor(
    name="dead_run_sensor",
    minimum_interval_seconds=int(run_settings()["sensor_interval_s"]),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks failed the runs whose process died and frees their pool slots (regime_pipeline/recovery.py).",
)
def dead_run_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    freed = free_dead_runs(context.instance, context.log)
    if not freed:
        return dg.SkipReason("no dead run holds a pool slot")
    return dg.SkipReason("freed the pool slots of " + ", ".join(f.run_id for f in freed))


# --------------------------------------------------------------------------- stopping on signals

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(SystemExit):
    """The command was stopped by a signal; the exit code is 128 + the signal number."""


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextmanager
def stop_on_signals(
    instance: dg.DagsterInstance,
    log: Callable[[str], None],
    *,
    check_every_s: float | None = None,
    grace_s: float | None = None,
) -> Iterator[None]:
    """Run the block so that Ctrl-C (SIGINT) and SIGTERM stop it, and dead runs are cleaned up meanwhile.

    Dagster, while it executes a run in this process, replaces the handlers of both signals with
    one that only records them until a step's code runs, so a run waiting for a pool slot ignores
    them. A watcher thread learns of every signal through the interpreter's wake-up file
    descriptor, which no handler replaces: after the first, the run has `grace_s` seconds to stop
    on its own (a step's code is interrupted at once); then, or at a second signal, the runs of
    this process are marked failed, their slots freed, and the process exits. Outside a run the
    signal interrupts the block at once. Either way the block ends in :class:`Stopped`, exit code
    128 + the signal number. Every `check_every_s` seconds the watcher also runs
    :func:`free_dead_runs`, so a slot held by a run that died while this one waits is freed.
    """
    settings = run_settings()
    check_every_s = float(settings["check_every_s"]) if check_every_s is None else check_every_s
    grace_s = float(settings["stop_grace_s"]) if grace_s is None else grace_s
    free_dead_runs(instance, SayLog(log))
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    previous = {sig: signal.signal(sig, _interrupt) for sig in STOP_SIGNALS}
    received: list[int] = []
    done = threading.Event()
    ref = instance.get_ref() if instance.is_persistent else None

    def watch() -> None:
        own = dg.DagsterInstance.from_ref(ref) if ref is not None else instance
        deadline = None
        next_check = time.monotonic() + check_every_s
        while not done.is_set():
            timeout = max(0.0, min(next_check, deadline or next_check) - time.monotonic())
            ready, _, _ = select.select([read_fd], [], [], min(timeout, 0.5))
            if done.is_set():
                return
            if ready:
                for signum in os.read(read_fd, 64):
                    if signum not in STOP_SIGNALS:
                        continue
                    received.append(signum)
                    name = signal.Signals(signum).name
                    if deadline is None:
                        deadline = time.monotonic() + grace_s
                        log(f"{name} received: stopping (the run in progress has {grace_s:.0f}s to stop)")
                    else:
                        deadline = time.monotonic()
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                name = signal.Signals(received[0]).name
                # The run, still waiting, re-queues its claim every few seconds: it must not do so
                # between its slots being freed and the exit. Its storage takes this lock for every
                # connection, so holding it stops the run's next database call.
                run_lock = getattr(instance.event_log_storage, "_db_lock", None)
                if run_lock is not None:
                    run_lock.acquire(timeout=30)
                freed = free_dead_runs(own, SayLog(log), only_pid=os.getpid())
                log(f"stopped by {name}: {len(freed)} run(s) of this process marked failed, their pool slots freed")
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(128 + received[0])
            if deadline is None and now >= next_check:
                free_dead_runs(own, SayLog(log))
                next_check = now + check_every_s

    watcher = threading.Thread(target=watch, name="stop_on_signals", daemon=True)
    watcher.start()
    try:
        yield
    except BaseException:
        if received:
            # Whatever the interrupted stage raised, the command stops because it was asked to.
            raise Stopped(128 + received[0]) from None
        raise
    else:
        if received:
            raise Stopped(128 + received[0])
    finally:
        done.set()
        watcher.join(timeout=5)
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(read_fd)
        os.close(write_fd)
        if received:
            log(f"stopped by {signal.Signals(received[0]).name}")


class SayLog:
    """A logger whose warnings go to `say` (a command's output), for :func:`free_dead_runs`."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say

    def warning(self, msg: str, *args: Any) -> None:
        self.say(msg)

    info = warning
