"""The control step: rolling reputation and the throttle controller, per signal partition,
fed in event-time order by the sequencer."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, NamedTuple

from streams.domain.control.mx_rules import MxRules
from streams.domain.control.reputation import KeyWindow, ReputationBook, Signal, signal_keys
from streams.domain.control.sequencer import Due, Sequencer
from streams.domain.control.throttle_controller import ThrottleController, main_key
from streams.domain.control.throttle_state import KeyState, ThrottleSetting
from streams.pipeline.records import (
    Output,
    Source,
    Store,
    reputation_output,
    signal_from_dict,
    throttle_output,
)

# Event-time spacing of the controller's ticks (suspension ends, step-ups): fixed instants,
# so that a replay ticks exactly where a live run did.
CONTROL_TICK_MS = 10_000

# key → (signal partition, source stream → offset of the last signal taken in), for
# changes not yet stored
_Dirty = dict[str, tuple[int, dict[str, int]]]


class Released(NamedTuple):
    """What ``ControlProcessor.release`` took in: outputs, the tokens of the signals taken
    in, and the tokens of signals whose step raised, with the error."""

    outputs: list[Output]
    tokens: list[Any]
    failed: list[tuple[Any, Exception]]


# What the sequencer holds per signal: its record and token, or only the token when the
# caller can read the record again from it (``reload``): a backlog can hold many thousands
# of signals, and the worker's input records hold them already.
_Held = tuple[dict[str, Any] | None, Any]


class _PartitionControl:
    def __init__(self, rules: MxRules, sequencer: Sequencer[_Held]) -> None:
        self.book = ReputationBook()
        self.controller = ThrottleController(rules)
        self.sequencer = sequencer
        self.republish: list[Output] = []  # sent with the partition's next release


class ControlProcessor:
    """Rolling reputation and the throttle controller, per signal-topic partition.

    Signals are keyed by provider group, so each group's windows and settings have one
    owner. Signals are not taken in as they arrive: an event-time sequencer
    (``streams.domain.control.sequencer``) holds them until every input stream has moved past
    them (``claim``) and releases them, with the controller's ticks, in one order that
    depends on the input alone; so a restarted or rebalanced worker, and ``replay``, take
    the same decisions. ``add`` holds a signal with a token (the worker's input record,
    left unacknowledged while held; ``reload`` reads the signal record again from it, so
    that a held signal costs no memory beyond its token); ``release`` returns the outputs
    and the tokens of the signals taken in.

    The book, controller and sequencer of a partition are rebuilt from the ``windows``,
    ``settings`` and ``sequences`` tables the first time the partition is seen after a
    start or rebalance. The tables are written by ``persist`` (the worker calls it before
    each offset commit), not per signal: a key's window changes with every signal, and
    writing it each time was half of the worker's table writes. Each stored record holds,
    per source stream, the offset of the last signal it took in (see ``Source``), so state
    persisted with a commit is never behind that commit and a signal emitted twice counts
    once.
    """

    def __init__(
        self,
        windows: Store,
        settings: Store,
        rules: MxRules,
        streams: list[str],
        sequences: Store | None = None,
        tick_ms: int = CONTROL_TICK_MS,
        reload: Callable[[Any], dict[str, Any]] | None = None,
    ) -> None:
        self.windows = windows
        self._reload = reload
        self.settings = settings
        self.sequences: Store = {} if sequences is None else sequences
        self.rules = rules
        self.streams = list(streams)
        self._stream_set = frozenset(streams)
        self.tick_ms = tick_ms
        self._parts: dict[int, _PartitionControl] = {}
        self._dirty_windows: _Dirty = {}
        self._dirty_settings: _Dirty = {}
        self._dirty_sequences: set[int] = set()

    def reset(self) -> None:
        """After a rebalance: unstored changes are dropped with the books, held signals with
        the sequencers; neither was committed, so their signals come again."""
        self._parts.clear()
        self._dirty_windows.clear()
        self._dirty_settings.clear()
        self._dirty_sequences.clear()

    def _part(self, partition: int) -> _PartitionControl:
        part = self._parts.get(partition)
        if part is None:
            stored = self.sequences.get(str(partition))
            sequencer: Sequencer[_Held] = Sequencer.from_dict(stored, self.streams, self.tick_ms)
            part = self._parts[partition] = _PartitionControl(self.rules, sequencer)
            for rec in self.windows.values():
                if rec["p"] == partition:
                    part.book.restore(KeyWindow.from_dict(rec["w"]))
            position = sequencer.position()
            for rec in self.settings.values():
                if rec["p"] == partition:
                    state = KeyState.from_dict(rec["s"])
                    part.controller.restore(state)
                    # Changed after the stored sequencer: its output may have been lost in
                    # the flush that stored it (see ``persist``), and a tick run again
                    # finds nothing to change, so it is sent again (a tie, twice: harmless).
                    if position is None or (state.changed_at or 0) >= position:
                        setting = part.controller.setting(state.key)
                        if setting is not None:
                            part.republish.append(throttle_output(setting))
        return part

    def add(self, record: dict[str, Any], partition: int, token: Any = None) -> bool:
        """Hold a signal record; False when it was taken in or held already (acknowledge
        its token now). A record without a source or a time raises here, before it is
        held; any other flaw fails its step on release."""
        source, time_ms = Source.of(record), int(record["t"])
        held = (None if self._reload is not None and token is not None else record, token)
        # Holding changes nothing the sequencer stores (claims, last released, last tick).
        return self._part(partition).sequencer.add(source.stream, source.offset, time_ms, held)

    def claim(self, partition: int, claims: dict[str, int]) -> None:
        """Progress of input streams: nothing below each time will come from them."""
        times = {str(stream): int(time_ms) for stream, time_ms in claims.items()}
        sequencer = self._part(partition).sequencer
        for stream, time_ms in times.items():
            if stream in self._stream_set:
                sequencer.claim(stream, time_ms)
        self._dirty_sequences.add(partition)

    def release(self, partition: int, until: int | None = None) -> Released:
        """Take in the signals the watermark (or ``until``) has passed, and tick between
        them. A signal whose step fails is reported with its token, and the rest go on."""
        part = self._part(partition)
        done = Released(part.republish, [], [])
        part.republish = []
        for kind, time_ms, item in part.sequencer.steps(until, self._due(part)):
            if kind == "tick" or item is None:
                done.outputs.extend(self._tick(part, partition, time_ms))
                continue
            record, token = item
            try:
                if record is None:
                    assert self._reload is not None
                    record = self._reload(token)
                signal, source = signal_from_dict(record), Source.of(record)
                done.outputs.extend(self._take(part, signal, partition, source))
            except Exception as exc:  # a bug in one signal's step must not stop the others
                done.failed.append((token, exc))
            else:
                done.tokens.append(token)
        if done.outputs or done.tokens or done.failed:
            self._dirty_sequences.add(partition)
        return done

    @staticmethod
    def _due(part: _PartitionControl) -> Due | None:
        """When the partition's next tick could change anything: the ticks before it are
        left out (see ``ThrottleController.next_due``)."""
        return part.controller.next_due

    def waiting(self) -> dict[int, tuple[int, str, int]]:
        """Partition → (signals held, the input stream holding them back, its bound in
        event time, -1 if never heard of), for partitions that hold signals."""
        out = {}
        for partition, part in sorted(self._parts.items()):
            slowest = part.sequencer.slowest()
            if part.sequencer.held and slowest is not None:
                out[partition] = (part.sequencer.held, *slowest)
        return out

    @staticmethod
    def _taken(dirty: _Dirty, store: Store, key: str) -> dict[str, int]:
        """Source stream → offset of the last signal ``key`` took in."""
        if key in dirty:
            return dirty[key][1]
        rec = store.get(key)
        return {} if rec is None else rec["o"]

    @classmethod
    def _seen(cls, dirty: _Dirty, store: Store, key: str, source: Source) -> bool:
        return source.offset <= cls._taken(dirty, store, key).get(source.stream, -1)

    @classmethod
    def _note(cls, dirty: _Dirty, store: Store, key: str, partition: int, source: Source) -> None:
        taken = dirty[key][1] if key in dirty else dict(cls._taken(dirty, store, key))
        taken[source.stream] = max(source.offset, taken.get(source.stream, -1))
        dirty[key] = (partition, taken)

    def _take(
        self, part: _PartitionControl, signal: Signal, partition: int, source: Source
    ) -> list[Output]:
        """Count the signal and let the controller react.

        Windows and controller states are idempotent per signal: a signal a key took in
        already (its source at or below the last one) is not counted again; instead the
        settings it may have changed are published again, in case a crash lost them.
        """
        keys = [key for _scope, key in signal_keys(signal)]
        seen = frozenset(
            k for k in keys if self._seen(self._dirty_windows, self.windows, k, source)
        )
        out = [reputation_output(r) for r in part.book.add(signal, skip=seen)]
        for key in keys:
            if key not in seen and part.book.window(key) is not None:
                self._note(self._dirty_windows, self.windows, key, partition, source)
        _scope, main = main_key(signal)
        controlled = [main, f"ip_group:{signal.sending_ip}|{signal.group}"]
        # Per key, as a partial flush can have stored one key's taking-in and not another's.
        done = frozenset(
            k for k in controlled if self._seen(self._dirty_settings, self.settings, k, source)
        )
        for key in done:
            setting = part.controller.setting(key)
            if setting is not None:
                out.append(throttle_output(setting))
        changed = part.controller.on_signal(signal, part.book, skip=done)
        out += [throttle_output(setting) for setting in changed]
        for key in {*controlled, *(s.key for s in changed)} - done:
            if part.controller.state(key) is not None:
                self._note(self._dirty_settings, self.settings, key, partition, source)
        return out

    def _tick(self, part: _PartitionControl, partition: int, now_ms: int) -> list[Output]:
        changed = part.controller.tick(now_ms)
        for setting in changed:
            key = setting.key
            if part.controller.state(key) is not None and key not in self._dirty_settings:
                taken = dict(self._taken(self._dirty_settings, self.settings, key))
                self._dirty_settings[key] = (partition, taken)
        return [throttle_output(setting) for setting in changed]

    def persist(
        self, in_partition: Callable[[int], AbstractContextManager[object]] = nullcontext
    ) -> Callable[[], None]:
        """Store every window and controller state changed since the last call (each
        partition's writes inside ``in_partition(partition)``); returns the step that
        stores the changed sequencers as they are now.

        Call that step only once the first writes (and the outputs sent before them) are
        on the broker. A SIGKILL can land part of a flush, and a sequencer stored ahead of
        the states would, after the restart, skip re-read signals that were never counted;
        one stored behind only lets them through again, to be recognised per key, and runs
        its ticks again, which a state stored ahead of them skips (``as_of_ms``); settings
        changed after it are sent again (``_part``)."""
        by_partition: dict[int, list[tuple[Store, str, dict[str, Any]]]] = {}
        for key, (partition, taken) in self._dirty_windows.items():
            window = self._parts[partition].book.window(key)
            if window is not None:
                rec = {"w": window.to_dict(), "p": partition, "o": taken}
                by_partition.setdefault(partition, []).append((self.windows, key, rec))
        for key, (partition, taken) in self._dirty_settings.items():
            part = self._parts[partition]
            state = part.controller.state(key)
            if state is not None:
                stored = {**state.to_dict(), "as_of_ms": part.sequencer.position()}
                rec = {"s": stored, "p": partition, "o": taken}
                by_partition.setdefault(partition, []).append((self.settings, key, rec))
        sequences = {
            partition: self._parts[partition].sequencer.to_dict()
            for partition in self._dirty_sequences
            if partition in self._parts
        }
        self._dirty_windows.clear()
        self._dirty_settings.clear()
        self._dirty_sequences.clear()
        for partition, writes in by_partition.items():
            with in_partition(partition):
                for store, key, rec in writes:
                    store[key] = rec

        def store_sequences() -> None:
            for partition, rec in sequences.items():
                with in_partition(partition):
                    self.sequences[str(partition)] = rec

        return store_sequences

    def settings_off_baseline(self) -> list[ThrottleSetting]:
        """Settings that differ from their baseline, over the partitions held here."""
        return [s for part in self._parts.values() for s in part.controller.settings_off_baseline()]
