"""``mta-feedback replay``: the pipeline's own steps over a file of input events, with no
broker, in file order; prints the final state as JSON lines.

The clock is the largest event time seen so far, exactly as in the stream. Each event goes
through the same Avro schema (encode + decode) and the same validation as in the workers,
so a line the stream would dead-letter is reported here too, and skipped.

The file's lines are the input streams as the producers wrote them: each event belongs to
the partition its recipient key hashes to (murmur2, as the producers partition) among
``MTA_PARTITIONS``, and each signal goes to the control partition of its provider group.
The control step's sequencer then orders the signals exactly as in the workers, so the
throttle settings equal a live run's over the same input.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

from aiokafka.partitioner import murmur2

from streams.domain.bounce.qualifier import Qualifier, default_qualifier, load_qualifier
from streams.domain.control.mx_rules import MxRules, load_mx_rules
from streams.domain.recipient.address_health import view as address_view
from streams.domain.recipient.message_status import view as message_view
from streams.pipeline.control import ControlProcessor
from streams.pipeline.feedback import FeedbackProcessor, LateEvent, PipelineConfig
from streams.pipeline.kpi import KpiAggregator
from streams.pipeline.records import (
    THROTTLE_FIELDS,
    Output,
    Source,
    signal_output,
    throttle_record,
)
from streams.pipeline.topics import INPUT_TOPICS, input_key, input_streams
from streams.pipeline.topology import (
    CONTROL,
    INGEST,
    KPI,
    StepSpec,
    TopologyError,
    check_handlers,
    check_output,
    reader_of,
)
from streams.runtime.codec import Codec, DecodeError
from streams.runtime.config import Settings
from streams.runtime.validate import validate_event
from streams.tools.progress import Bar, progress_bar

_TIME_FIELDS = ("event_time", "next_attempt_time")


class ReplayError(ValueError):
    """A line of the input file is not a usable event."""


def parse_time(value: Any, name: str) -> int | None:
    """ISO 8601 (naive means UTC) or epoch milliseconds → epoch ms."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ReplayError(f"{name} must be ISO 8601 or epoch milliseconds, not a boolean")
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ReplayError(f"{name} {value!r} is not ISO 8601") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp() * 1000)
    raise ReplayError(f"{name} must be ISO 8601 or epoch milliseconds")


def partition_of(key: str | bytes, partitions: int) -> int:
    """The partition a producer puts ``key`` in (murmur2, as Java and librdkafka do)."""
    data = key if isinstance(key, bytes) else key.encode()
    return (murmur2(data) & 0x7FFFFFFF) % partitions


class Replayer:
    """Runs the pipeline steps in memory; also the engine of the simulator's reference.

    ``partitions`` must be the workers' ``MTA_PARTITIONS`` for throttle settings to equal
    theirs (it decides which input stream each event is in)."""

    def __init__(
        self,
        qualifier: Qualifier | None = None,
        config: PipelineConfig | None = None,
        codec: Codec | None = None,
        rules: MxRules | None = None,
        partitions: int = Settings.partitions,
    ) -> None:
        self.codec = codec or Codec()
        self.messages: dict[str, Any] = {}
        self.addresses: dict[str, Any] = {}
        self.kpi_sums: dict[str, Any] = {}
        rules = rules or load_mx_rules(None)
        self.feedback = FeedbackProcessor(
            self.messages,
            self.addresses,
            {},
            qualifier or default_qualifier(),
            config,
            signal_fn=signal_output(rules),
        )
        self.kpi = KpiAggregator(self.kpi_sums)
        self.partitions = partitions
        self.control = ControlProcessor({}, {}, rules, input_streams(partitions))
        self.errors: list[str] = []
        self._offset = 0
        self._stream_offsets: dict[str, int] = {}
        # The steps that read internal topics, by name (ingest is ``apply``/``advance``).
        self._steps: dict[str, Callable[[Output], list[Output]]] = {
            INGEST.name: self._not_internal,
            KPI.name: self._kpi,
            CONTROL.name: self._hold_signal,
        }
        check_handlers(self._steps, "replay")

    def normalise(self, obj: Any) -> tuple[str, dict[str, Any]]:
        """A JSON input object → (family, event) in the shape the workers decode."""
        if not isinstance(obj, dict):
            raise ReplayError("line is not a JSON object")
        family = obj.get("family")
        if family not in INPUT_TOPICS:
            raise ReplayError(f"family must be one of {', '.join(INPUT_TOPICS)}, got {family!r}")
        event = {k: v for k, v in obj.items() if k != "family"}
        for name in _TIME_FIELDS:
            if name in event:
                event[name] = parse_time(event[name], name)
        try:
            decoded = self.codec.decode(family, self.codec.encode(family, event))
        except (DecodeError, ValueError, TypeError, KeyError) as exc:
            raise ReplayError(f"does not fit the {family} schema: {exc}"[:300]) from None
        validate_event(family, decoded)
        return family, decoded

    def apply(self, family: str, event: dict[str, Any]) -> list[Output]:
        self._offset += 1
        now = self.feedback.clock
        # The input stream and offset a worker would read the event at, for its signal.
        key = input_key(str(event["recipient"]))
        stream = f"{family}:{partition_of(key, self.partitions)}"
        offset = self._stream_offsets[stream] = self._stream_offsets.get(stream, -1) + 1
        outputs = self.feedback.process(family, event, 0, self._offset, Source(stream, offset))
        if self.feedback.clock > now:
            outputs += self.feedback.tick(self.feedback.clock, 0, self._offset)
        else:
            outputs += self.feedback.flush_kpis(0)  # the worker does this on each tick
        return self._route(outputs)

    def advance(self, now_ms: int) -> list[Output]:
        """Move the clock with no event, as the workers' clock topic does."""
        return self._route(self.feedback.tick(now_ms, 0, self._offset))

    def settle(self) -> list[Output]:
        """The input so far is complete: the control step takes in every signal held back
        and ticks up to the clock (the workers do the same once every input stream has
        been idle for a commit interval)."""
        outputs: list[Output] = []
        for partition in range(self.partitions):
            released = self.control.release(partition, until=self.feedback.clock + 1)
            if released.failed:
                raise released.failed[0][1]
            outputs += released.outputs
        return self._route(outputs, CONTROL)

    def _route(self, outputs: list[Output], step: StepSpec = INGEST) -> list[Output]:
        """Hand each output of ``step`` to the step that reads its topic (the topology's),
        and return those that leave the pipeline."""
        routed = []
        for out in outputs:
            check_output(step, out.topic)
            reader = reader_of(out.topic)
            if reader is None:
                routed.append(out)
            else:
                routed += self._route(self._steps[reader.name](out), reader)
        return routed

    def _kpi(self, out: Output) -> list[Output]:
        return self.kpi.process(out.value, self.feedback.clock, self._offset)

    def _hold_signal(self, out: Output) -> list[Output]:
        # Released with the others once the input so far is complete (``settle``).
        self.control.add(out.value, partition_of(out.key, self.partitions))
        return []

    @staticmethod
    def _not_internal(out: Output) -> list[Output]:
        raise TopologyError(f"ingest reads input events only, not '{out.topic}' records")

    def run_lines(self, lines: Iterable[str]) -> None:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                family, event = self.normalise(json.loads(line))
            except (ValueError, DecodeError) as exc:
                self.errors.append(f"line {number}: {exc}")
                continue
            try:
                self.apply(family, event)
            except LateEvent as exc:
                self.errors.append(f"line {number}: late: {exc}")

    def final_state(self) -> Iterator[dict[str, Any]]:
        """The state once all input is in (held signals are taken in first)."""
        self.settle()
        now = self.feedback.clock
        for mid, rec in sorted(self.feedback.messages.tracked(), key=lambda item: item[0]):
            state = rec.state
            v = message_view(state, now)
            yield {
                "type": "message",
                "message_id": mid,
                "delivery_id": state.delivery_id,
                "status": v.status,
                "failure_type": v.failure_type if v.status != "sent" else None,
                "failure_reason": v.failure_reason if v.status != "sent" else None,
                "attempts": v.attempts,
            }
        for address, rec in sorted(self.feedback.addresses.tracked(), key=lambda item: item[0]):
            a = address_view(rec.state, now)
            yield {
                "type": "address",
                "address": address,
                "state": a.state,
                "error_count": a.error_count,
            }
        for delivery_id in sorted(self.kpi_sums):
            c = self.kpi.total(self.kpi_sums[delivery_id])
            yield {
                "type": "kpi",
                "delivery_id": delivery_id,
                "to_deliver": c.to_deliver,
                "sent": c.sent,
                "failed": c.failed,
                "pending": c.pending,
                "success_pct": round(c.success_pct, 4),
            }
        for setting in sorted(self.control.settings_off_baseline(), key=lambda s: s.key):
            record = throttle_record(setting)
            yield {
                "type": "throttle",
                **{k: record[k] for k in THROTTLE_FIELDS},
            }


def _counted(
    lines: Iterable[str], bar: Bar, position: Callable[[], int] | None = None
) -> Iterator[str]:
    """``lines``, moving ``bar`` every few hundred lines and at the end to ``position()``
    (bytes read), or to the number of lines without one."""
    number = 0
    for number, line in enumerate(lines, 1):
        if number % 256 == 0:
            bar.update(position() if position else number)
        yield line
    bar.update(position() if position else number)


def _file_size(fh: TextIO) -> int | None:
    """The size of the regular file behind ``fh``; None for a pipe, a terminal or no file."""
    try:
        info = os.fstat(fh.fileno())
    except (OSError, ValueError):
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def _read(replayer: Replayer, fh: TextIO, name: str, err: TextIO) -> None:
    """Feeds ``fh`` to ``replayer``, with a bar by bytes for a file, by lines for a pipe."""
    size = _file_size(fh)
    if size is not None:
        with progress_bar(f"replay {name}", size, in_bytes=True, stream=err) as bar:
            replayer.run_lines(_counted(fh, bar, fh.buffer.tell))
    else:
        with progress_bar(f"replay {name}", unit="lines", stream=err) as bar:
            replayer.run_lines(_counted(fh, bar))


def run(
    path: str,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    settings: Settings | None = None,
) -> int:
    """Replay with the workers' configuration: operator rule files and thresholds.

    With ``err`` a terminal, a progress bar follows the bytes read (lines from a pipe)."""
    settings = settings or Settings.from_env()
    replayer = Replayer(
        load_qualifier(settings.bounce_rules_file or None),
        settings.pipeline_config(),
        rules=settings.mx_rules(),
        partitions=settings.partitions,
    )
    try:
        if path == "-":
            _read(replayer, sys.stdin, "stdin", err)
        else:
            with open(path, encoding="utf-8", errors="replace") as fh:
                _read(replayer, fh, os.path.basename(path), err)
    except OSError as exc:
        print(f"mta-feedback replay: cannot read {path}: {exc.strerror}", file=err)
        return 2
    for line in replayer.final_state():
        out.write(json.dumps(line, sort_keys=True) + "\n")
    for message in replayer.errors:
        print(f"mta-feedback replay: skipped {message}", file=err)
    return 0
