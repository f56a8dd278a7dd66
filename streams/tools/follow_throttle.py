"""``mta-feedback follow-throttle``: the throttle settings, as an MTA's own control.

Reads the compacted throttle topic from its beginning (no consumer group: nothing is
committed), so that at start it knows every key's current setting, then follows changes.

- ``--emit json``: one JSON line per setting at start (the current state, by key), then
  one per change, for any MTA's own script.
- ``--emit pmta``: PowerMTA's commands and configuration fragment
  (``streams/adapters/pmta_control.py``), printed as a shell script by default, run with
  ``--apply``. At start the whole current state is applied; then each change, and the end
  of each suspension (a timer here), applies what differs from what PowerMTA was last told
  with success, so a failed command is tried again on the next change.

A record that cannot be decoded or used is logged and skipped. SIGINT and SIGTERM stop it
cleanly; ``--once`` prints (or applies) the current state and exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import TextIO

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from streams.adapters import pmta_control as pc
from streams.domain.control.mx_rules import MxRules
from streams.pipeline.topics import Topic
from streams.runtime.codec import Codec, DecodeError
from streams.runtime.config import ConfigError, Settings

log = logging.getLogger("mta_feedback.follow_throttle")

DEFAULT_INCLUDE = "/etc/pmta/mta-feedback.conf"
_STDERR_CHARS = 500


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of the ``follow-throttle`` subcommand."""
    parser.add_argument(
        "--emit", choices=("pmta", "json"), required=True, help="PowerMTA control or JSON lines"
    )
    parser.add_argument("--once", action="store_true", help="the current state, then exit")
    parser.add_argument(
        "--apply", action="store_true", help="pmta: run the commands (default: print them)"
    )
    parser.add_argument("--pmta-bin", default="pmta", help="the pmta command (default: pmta)")
    parser.add_argument(
        "--pmta-include",
        default=DEFAULT_INCLUDE,
        metavar="PATH",
        help=f"pmta: the configuration fragment PowerMTA includes (default: {DEFAULT_INCLUDE})",
    )
    parser.add_argument(
        "--vmta-map",
        default="",
        metavar="IP=VMTA,...",
        help="pmta: the virtual MTA of each sending IP, for IP x group keys",
    )
    parser.add_argument(
        "--vmta-map-file", metavar="PATH", help="pmta: the same map in a file, IP=VMTA per line"
    )
    parser.add_argument(
        "--catch-up-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds to read the topic to its end at start (default: 30)",
    )
    parser.add_argument(
        "--command-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="pmta: seconds a command may take (default: 60)",
    )


class Runner:
    """Prints the control as a shell script; ``Applier`` runs it instead."""

    def __init__(self, pmta_bin: str, include: Path, out: TextIO) -> None:
        self.pmta_bin = pmta_bin
        self.include = include
        self.out = out

    def note(self, text: str) -> None:
        print(f"# {text}", file=self.out, flush=True)

    def write_fragment(self, text: str) -> bool:
        quoted = shlex.quote(str(self.include))
        print(f"cat > {quoted} <<'EOF'\n{text}EOF", file=self.out, flush=True)
        return True

    def run(self, args: tuple[str, ...]) -> bool:
        print(shlex.join((self.pmta_bin, *args)), file=self.out, flush=True)
        return True


class Applier(Runner):
    def __init__(self, pmta_bin: str, include: Path, timeout_s: float) -> None:
        super().__init__(pmta_bin, include, sys.stdout)
        self.timeout_s = timeout_s

    def note(self, text: str) -> None:
        log.info("%s", text)

    def write_fragment(self, text: str) -> bool:
        """Write temp + rename in the same directory, so PowerMTA never reads half a file."""
        try:
            fd, tmp = tempfile.mkstemp(prefix=".mta-feedback.", dir=self.include.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(text)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.chmod(tmp, 0o644)
                os.replace(tmp, self.include)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            log.error("cannot write %s: %s (tried again on the next change)", self.include, exc)
            return False
        log.info("wrote %s (%d bytes)", self.include, len(text.encode()))
        return True

    def run(self, args: tuple[str, ...]) -> bool:
        argv = (self.pmta_bin, *args)
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=self.timeout_s, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.error("%s failed: %s (tried again on the next change)", shlex.join(argv), exc)
            return False
        if done.returncode != 0:
            log.error(
                "%s failed with exit code %d: %s (tried again on the next change)",
                shlex.join(argv),
                done.returncode,
                done.stderr.strip()[:_STDERR_CHARS],
            )
            return False
        log.info("ran %s", shlex.join(argv))
        return True


class Follower:
    """The current setting of every key, and what PowerMTA was last told with success."""

    def __init__(self, rules: MxRules, vmtas: dict[str, str]) -> None:
        self.rules = rules
        self.vmtas = vmtas
        self.settings: dict[str, pc.Setting] = {}
        self.applied: dict[pc.Queue, pc.QueueState] = {}
        self.fragment: str | None = None  # the text PowerMTA last reloaded with success
        self._noted: set[str] = set()

    def accept(self, setting: pc.Setting) -> bool:
        """Keep ``setting`` unless an equal or newer version of its key is known."""
        known = self.settings.get(setting.key)
        if known is not None and known.version >= setting.version:
            return False
        self.settings[setting.key] = setting
        return True

    def json_lines(self, settings: list[pc.Setting]) -> None:
        for setting in settings:
            try:
                line = pc.json_line(setting, self.rules)
            except pc.SettingError as exc:
                log.warning("setting of %s skipped: %s", setting.key, exc)
                continue
            print(json.dumps(line, sort_keys=True), flush=True)

    def reconcile(self, runner: Runner, now_ms: int, why: str) -> None:
        """Bring PowerMTA to the current settings at ``now_ms``: the fragment and a reload
        when its text changed (limits first), then the queue commands."""
        desired, notes = pc.desired_queues(self.settings.values(), self.rules, self.vmtas, now_ms)
        for note in notes:
            if note not in self._noted:
                self._noted.add(note)
                log.warning("%s", note)
        fragment = pc.render_fragment(self.settings.values(), self.rules)
        commands = pc.plan(self.applied, desired)
        if fragment == self.fragment and not commands:
            return
        runner.note(why)
        written = fragment != self.fragment and runner.write_fragment(fragment)
        if written and runner.run(("reload",)):
            self.fragment = fragment
        for command in commands:
            if runner.run(command.args):
                pc.apply_effect(self.applied, command)


class ThrottleReader:
    """The throttle topic from its beginning: every partition assigned, nothing committed."""

    def __init__(self, settings: Settings, codec: Codec) -> None:
        self.codec = codec
        self.topic = settings.topic(Topic.THROTTLE)
        self.consumer = Consumer(
            {
                "bootstrap.servers": settings.bootstrap_servers,
                "group.id": f"{settings.app_id}-follow-throttle-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                **settings.kafka_client_config(),
            }
        )
        meta = self.consumer.list_topics(self.topic, timeout=10).topics[self.topic]
        if meta.error is not None or not meta.partitions:
            self.consumer.close()
            raise LookupError(f"topic {self.topic}: {meta.error or 'no partitions'}")
        self.consumer.assign(
            [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in meta.partitions]
        )
        self.behind = set(meta.partitions)  # partitions not yet read to their end

    def poll(self, timeout_s: float) -> list[pc.Setting]:
        found = []
        for msg in self.consumer.consume(500, timeout=timeout_s):
            where = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self.behind.discard(msg.partition())
                else:
                    log.warning("consumer error on %s: %s", self.topic, err)
                continue
            try:
                found.append(pc.Setting.from_record(self.codec.decode(Topic.THROTTLE, msg.value())))
            except DecodeError as exc:
                log.warning("record %s skipped: cannot decode (%s): %s", where, exc.kind, exc)
            except pc.SettingError as exc:
                log.warning("record %s skipped: %s", where, exc)
        return found

    def close(self) -> None:
        self.consumer.close()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _catch_up(reader: ThrottleReader, follower: Follower, stop: threading.Event, s: float) -> bool:
    deadline = time.monotonic() + s
    while reader.behind and not stop.is_set() and time.monotonic() < deadline:
        for setting in reader.poll(0.2):
            follower.accept(setting)
    return not reader.behind


def _changes(changed: list[pc.Setting]) -> str:
    shown = ", ".join(f"{s.key} v{s.version} {s.mode}" for s in changed[:5])
    return shown if len(changed) <= 5 else f"{shown} and {len(changed) - 5} more"


def _follow(
    reader: ThrottleReader, follower: Follower, runner: Runner | None, args: argparse.Namespace
) -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not _catch_up(reader, follower, stop, args.catch_up_timeout):
        if stop.is_set():
            return
        if args.once:
            raise TimeoutError(f"{reader.topic} not read to its end in {args.catch_up_timeout} s")
        log.warning("%s not read to its end yet; still reading", reader.topic)
    if runner is None:
        follower.json_lines(sorted(follower.settings.values(), key=lambda s: s.key))
    else:
        follower.reconcile(runner, _now_ms(), "current state")
    if args.once:
        return
    log.info("following %s (%d keys)", reader.topic, len(follower.settings))
    while not stop.is_set():
        expiry = pc.next_expiry(follower.settings.values(), _now_ms())
        wait = 0.5 if expiry is None else min(0.5, max(0.0, (expiry - _now_ms()) / 1000))
        changed = [s for s in reader.poll(wait) if follower.accept(s)]
        if runner is None:
            follower.json_lines(changed)
        elif changed:
            follower.reconcile(runner, _now_ms(), _changes(changed))
        elif expiry is not None and _now_ms() >= expiry:
            follower.reconcile(runner, _now_ms(), "a suspension ended")


def _fail(text: str, code: int = 2) -> int:
    print(f"mta-feedback follow-throttle: {text}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    """Body of ``mta-feedback follow-throttle``; returns the exit code."""
    if args.apply and args.emit != "pmta":
        return _fail("--apply goes with --emit pmta")
    try:
        settings = Settings.from_env()
        rules = settings.mx_rules()
        vmtas = _vmta_map(args)
    except (ConfigError, ValueError, OSError) as exc:
        return _fail(str(exc))
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=settings.log_level.upper(),
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
        )
    runner: Runner | None = None
    if args.emit == "pmta":
        include = Path(args.pmta_include)
        runner = (
            Applier(args.pmta_bin, include, args.command_timeout)
            if args.apply
            else Runner(args.pmta_bin, include, sys.stdout)
        )
    follower = Follower(rules, vmtas)
    try:
        reader = ThrottleReader(settings, Codec.from_settings(settings))
    except (LookupError, KafkaException) as exc:
        return _fail(f"cannot read the throttle topic: {exc}", 1)
    try:
        _follow(reader, follower, runner, args)
    except TimeoutError as exc:
        return _fail(str(exc), 1)
    finally:
        reader.close()
    return 0


def _vmta_map(args: argparse.Namespace) -> dict[str, str]:
    text = args.vmta_map
    if args.vmta_map_file:
        text += "\n" + Path(args.vmta_map_file).read_text("utf-8")
    return pc.parse_vmta_map(text)
