"""``fleet capacity --shards N``: every step of the search played by N follower processes at once,
each shard ``I/N`` of the step (its exact share of arrivals and device identities, as ``fleet run
--shard``), their reports merged exactly (``fleet report merge``'s merge) before the step is judged.

Leader and followers talk through files in one directory, so the followers may be local
processes (the leader starts them) or the pods of a Kubernetes Indexed Job sharing a volume
(``fleet capacity PROFILE --follow --shard-dir DIR``). Every file is written atomically:

* ``search.json``: the leader's search, a fresh id for each search (stale files of an earlier
  one are removed first), the shard count and the profile's digest;
* ``ready-I.json``: follower I joined that search (followers that started first wait for it);
* ``step-K.json``: step K's plan: rate, duration, warm-up and the common start instant;
* ``step-K-shard-I.json``: follower I's report of step K (``step-K-shard-I.error``: why not);
* ``done.json``: the search is over; followers exit.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Self, TextIO

from fleet.errors import FleetError
from fleet.files import atomic_write
from fleet.load.capacity import step_profile
from fleet.load.orchestrator import RunOptions, prepare_keys, report_dict, run_profile
from fleet.load.profiles import Profile
from fleet.load.results import RunResults
from fleet.load.shards import MergeError, Shard, merge_reports
from fleet.tls import TlsClient

__all__ = ["FollowError", "ShardDir", "ShardedSteps", "follow", "profile_digest"]

POLL = 0.1  # seconds between looks at the directory
READY_TIMEOUT = 600.0  # followers to join (pods pull an image and start)
IDLE_TIMEOUT = 900.0  # a follower gives up when the leader writes nothing for this long
MASTER_ENV = "FLEET_CAPACITY_MASTER"  # the master secret, handed to local followers
PROXY_ENV = "FLEET_CAPACITY_PROXY"  # the leader's --proxy, handed to local followers
TLS_KEY_PASS_ENV = "FLEET_CAPACITY_TLS_KEY_PASS"  # the passphrase of --tls-key, handed to local followers
LEADER_ENV = "FLEET_CAPACITY_LEADER"  # a local follower's leader (its parent): it stops when the leader is gone


class FollowError(FleetError):
    """A sharded search that cannot go on: a follower missing, late or failing."""


def profile_digest(path: Path) -> str:
    """Leader and followers must play the same profile: its file's SHA-256."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(data).encode())


@dataclass(frozen=True)
class ShardDir:
    path: Path

    @property
    def search(self) -> Path:
        return self.path / "search.json"

    @property
    def done(self) -> Path:
        return self.path / "done.json"

    def ready(self, index: int) -> Path:
        return self.path / f"ready-{index}.json"

    def plan(self, step: int) -> Path:
        return self.path / f"step-{step}.json"

    def report(self, step: int, index: int) -> Path:
        return self.path / f"step-{step}-shard-{index}.json"

    def error(self, step: int, index: int) -> Path:
        return self.path / f"step-{step}-shard-{index}.error"

    def clear(self) -> None:
        """Remove an earlier search's files (not the followers' logs)."""
        for pattern in ("search.json", "done.json", "ready-*.json", "step-*.json", "step-*.error"):
            for old in self.path.glob(pattern):
                old.unlink(missing_ok=True)


def _by_env(env: dict[str, str], var: str, secret: bytes, flag: str, what: str) -> list[str]:
    """``flag env:var`` for a local follower, with ``secret`` put in its ``env``: never on a command line."""
    try:
        env[var] = secret.decode("utf-8")
    except UnicodeDecodeError:
        raise FollowError(f"--shards: local followers take {what} that is UTF-8 text") from None
    return [flag, f"env:{var}"]


# -- the leader ------------------------------------------------------------------------------------


class ShardedSteps:
    """The leader's side: ``with ShardedSteps(...) as steps: results, doc = steps.play(k, profile, warmup)``.

    Without ``directory`` it starts ``shards`` local followers in a temporary one (and stops
    them at the end); with one, the followers are started elsewhere and joined through it."""

    def __init__(self, profile_path: Path, shards: int, url: str, *, directory: Path | None = None,
                 master_secret: bytes | None = None, trusted: list[Path] | None = None, keys_dir: Path | None = None,
                 lead: float = 2.0, transaction_timeout: float = 10.0, top: tuple[float, float] = (0.0, 0.0),
                 proxy: str | None = None, tls: TlsClient | None = None, log: TextIO = sys.stderr) -> None:
        self.profile_path = profile_path
        self.shards = shards
        self.url = url
        self.local = directory is None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fleet-capacity-shards-")
            directory = Path(self._tmp.name)
        self.dir = ShardDir(directory)
        self.master_secret = master_secret
        self.trusted = list(trusted or [])
        self.keys_dir = keys_dir
        self.proxy = proxy
        self.tls = tls
        self.lead = lead
        self.transaction_timeout = transaction_timeout
        self.top = top  # the search's highest rate and its step's seconds: the key pools followers fill first
        self.log = log
        self.id = secrets.token_hex(8)
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Self:
        try:
            self.dir.path.mkdir(parents=True, exist_ok=True)
            self.dir.clear()
            _write(self.dir.search, {"id": self.id, "shards": self.shards, "profile": profile_digest(self.profile_path),
                                     "max_rate": self.top[0], "step_seconds": self.top[1]})
            if self.local:
                self._start_followers()
            where = "local processes" if self.local else f"followers of {self.dir.path}"
            print(f"fleet: {self.shards} shards ({where}) play each step", file=self.log)
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        try:
            _write(self.dir.done, {"id": self.id})
        except OSError:
            pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.terminate()
                p.wait(timeout=10)
        if self._tmp is not None:
            self._tmp.cleanup()

    def _start_followers(self) -> None:
        env = dict(os.environ)
        env[LEADER_ENV] = str(os.getpid())
        args = ["--server", self.url]
        if self.master_secret is not None:
            args += _by_env(env, MASTER_ENV, self.master_secret, "--master-secret", "a master secret")
        for path in self.trusted:
            args += ["--trusted", str(path)]
        if self.keys_dir is not None:
            args += ["--keys", str(self.keys_dir)]
        if self.proxy is not None:
            env[PROXY_ENV] = self.proxy
        args += self._tls_args(env)
        for i in range(self.shards):
            with open(self.dir.path / f"follower-{i}.log", "wb") as logfile:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "fleet.cli.main", "capacity", str(self.profile_path), "--follow",
                     "--shard-dir", str(self.dir.path), "--shard", f"{i}/{self.shards}", *args],
                    stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT, env=env,
                ))

    def _tls_args(self, env: dict[str, str]) -> list[str]:
        """The leader's --tls-* for its local followers; the key's passphrase goes by ``env``."""
        if self.tls is None:
            return []
        args: list[str] = []
        for flag, path in (("--tls-trusted", self.tls.trusted), ("--tls-cert", self.tls.cert), ("--tls-key", self.tls.key)):
            if path is not None:
                args += [flag, str(path)]
        if self.tls.key_pass is not None:
            args += _by_env(env, TLS_KEY_PASS_ENV, self.tls.key_pass, "--tls-key-pass", "a --tls-key-pass")
        return args

    def _check_followers(self) -> None:
        for i, p in enumerate(self.procs):
            if p.poll() is not None:
                raise FollowError(f"follower {i} exited ({p.returncode}): {self._last_line(i)}")

    def _last_line(self, index: int) -> str:
        try:
            lines = (self.dir.path / f"follower-{index}.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return lines[-1] if lines else "no output"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            joined = {i for i in range(self.shards) if (_read(self.dir.ready(i)) or {}).get("id") == self.id}
            if len(joined) == self.shards:
                return
            self._check_followers()
            if time.monotonic() > deadline:
                missing = ", ".join(str(i) for i in sorted(set(range(self.shards)) - joined))
                raise FollowError(f"shard(s) {missing} did not join in {READY_TIMEOUT:.0f} s (are the followers running on {self.dir.path}?)")
            time.sleep(POLL)

    def play(self, step: int, rate: float, profile: Profile, warmup: float) -> tuple[RunResults, dict[str, Any]]:
        """Step ``step`` (``profile`` at ``rate``) played by every shard; the merged results and report."""
        start = time.time() + self.lead
        _write(self.dir.plan(step), {"id": self.id, "step": step, "rate": rate, "duration": profile.duration,
                                     "warmup": warmup, "start_at": start})
        deadline = start + profile.duration + 2 * self.transaction_timeout + 60
        reports: dict[int, tuple[Path, dict[str, Any]]] = {}
        while len(reports) < self.shards:
            for i in set(range(self.shards)) - set(reports):
                error = self.dir.error(step, i)
                if error.exists():
                    raise FollowError(f"shard {i} of step {step}: {error.read_text(errors='replace').strip()}")
                doc = _read(self.dir.report(step, i))
                if doc is not None and doc.get("capacity_search") == {"id": self.id, "step": step}:
                    reports[i] = (self.dir.report(step, i), doc)
            if len(reports) == self.shards:
                break
            self._check_followers()
            if time.time() > deadline:
                missing = ", ".join(str(i) for i in sorted(set(range(self.shards)) - set(reports)))
                raise FollowError(f"shard(s) {missing} sent no report of step {step}")
            time.sleep(POLL)
        try:
            merged, _verdict = merge_reports([reports[i] for i in range(self.shards)])
        except MergeError as exc:
            raise FollowError(f"step {step}: {exc}") from None
        return RunResults.from_dict(merged["results"]), merged


# -- a follower ----------------------------------------------------------------------------------------


def follow(profile_path: Path, profile: Profile, directory: Path, shard: Shard, options: RunOptions,
           log: TextIO = sys.stderr) -> None:
    """Play shard ``shard`` of every step the leader plans in ``directory`` until it is done."""
    sd = ShardDir(directory)
    digest = profile_digest(profile_path)
    joined: str | None = None
    step = 1
    idle_since = time.monotonic()
    leader = os.environ.get(LEADER_ENV)
    print(f"fleet: shard {shard} following {directory}", file=log, flush=True)
    while True:
        if leader is not None and str(os.getppid()) != leader:
            raise FollowError("the leader is gone (a local follower stops with it)")
        search = _read(sd.search)
        if search is not None and search.get("id") != joined and (_read(sd.done) or {}).get("id") != search.get("id"):
            if search.get("shards") != shard.count:
                raise FollowError(f"the leader's search has {search.get('shards')} shards, this is shard {shard}")
            if search.get("profile") != digest:
                raise FollowError(f"the leader plays another profile than {profile_path}")
            if search.get("max_rate"):  # RSA pools filled before the first step, not late in one
                prepare_keys(step_profile(profile, float(search["max_rate"]), float(search["step_seconds"])),
                             options.keys_dir, log)
            joined, step, idle_since = str(search["id"]), 1, time.monotonic()
            _write(sd.ready(shard.index), {"id": joined, "pid": os.getpid()})
        if joined is not None:
            if (_read(sd.done) or {}).get("id") == joined:
                return
            plan = _read(sd.plan(step))
            if plan is not None and plan.get("id") == joined:
                _play(sd, plan, step, profile, shard, options, log)
                step += 1
                idle_since = time.monotonic()
                continue
        if time.monotonic() - idle_since > IDLE_TIMEOUT:
            raise FollowError(f"no step from the leader in {IDLE_TIMEOUT:.0f} s: giving up")
        time.sleep(POLL)


def _play(sd: ShardDir, plan: dict[str, Any], step: int, profile: Profile, shard: Shard, options: RunOptions,
          log: TextIO) -> None:
    start = float(plan["start_at"])
    late = time.time() - start
    if late > 0.5:
        atomic_write(sd.error(step, shard.index), f"saw the plan {late:.1f} s after the step's start: raise --lead\n".encode())
        return
    sp = step_profile(profile, float(plan["rate"]), float(plan["duration"]))
    try:
        results, verdict = run_profile(sp, replace(options, shard=shard, start_at=start, warmup=float(plan["warmup"]),
                                                   progress=False, report=None), log)
    except FleetError as exc:
        atomic_write(sd.error(step, shard.index), f"{exc}\n".encode())
        return
    extra = {"shard": {"index": shard.index, "count": shard.count, "start_at": start}, "start_at": start,
             "capacity_search": {"id": plan["id"], "step": step}}
    assert options.server is not None
    doc = report_dict(sp, results, verdict, options.server, extra)
    atomic_write(sd.report(step, shard.index), json.dumps(doc).encode())
    print(f"fleet: shard {shard} step {step}: {plan['rate']:g}/s offered in all, {verdict.line()}", file=log, flush=True)
