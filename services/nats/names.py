"""Where everything lives on NATS: stream, bucket and consumer names, subjects, headers, and the
escaping that turns any id into a legal subject token or KV key.

  CX_EVENTS      cx.ev.<shard>.<run_id>.<type>      every fact about a run, its subject ending in
                                                    the event's type (`TaskSucceeded`), so the
                                                    server's permissions can say which types a
                                                    user may append (infra/nats/roles.conf);
                                                    a run's reads take cx.ev.<shard>.<run_id>.*
                                                    plus cx.ev.<shard>.<run_id>, where events
                                                    were stored before (limits, no deletes;
                                                    durable consumer `notifications`, pushing
                                                    to cx.notify.deliver, queue group
                                                    `notifications`: run ends for the webhooks)
  CX_WORK        cx.work.<queue>                    dispatch messages (work queue, one durable
                                                    pull consumer `work_<queue>` per queue)
  CX_ADVISORIES  $JS.EVENT.ADVISORY...MAX_DELIVERIES dispatches whose deliveries ran out
  CX_LOGS        cx.log.<run_id>.<task>.<attempt>   command output (limits, 7 days)
  KV             cx_defs, cx_agents, cx_leases, cx_checkpoints,
                 cx_schedules (per cron schedule: last slot considered, open claims),
                 cx_auth (user.<name>, token.<id>), cx_sessions (session.<sha256>, TTL 12 h)
  CX_TRIGGERS    cx.trigger.task|dag.<id>           subject triggers (work queue, no_ack: the answer
                                                    to a request is its outcome; durable pull
                                                    consumer `triggers` shared by orchestrators)
  CX_TRIGGER_LOG cx.tlog.accepted|rejected          what became of each trigger (limits, 30 days)
  KV             cx_trigger_keys                    idempotency key -> run id (TTL: the window)
  CX_AUDIT       cx.audit.<action>                  who did what to users, tokens, sessions
                                                    (limits, 365 days; services/nats/audit.py)
  object store   cx_snapshots                       the orchestrator's snapshot of its open runs
  core NATS      cx.cancel.<run_id>                 cancellation wake-ups (not stored)
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final, Literal

from core.ids import shard_of

if TYPE_CHECKING:
    from core.events import Event

__all__ = [
    "ADVISORIES_STREAM",
    "AGENTS_BUCKET",
    "ALL_EVENTS",
    "AUDIT_STREAM",
    "AUDIT_SUBJECTS",
    "AUTH_BUCKET",
    "CANCEL_PREFIX",
    "CHECKPOINTS_BUCKET",
    "DEFS_BUCKET",
    "EVENTS_STREAM",
    "EVENT_SUBJECTS",
    "EVENT_SUBJECTS_LEGACY",
    "LEASES_BUCKET",
    "LOGS_STREAM",
    "LOST_CONSUMER",
    "MAX_DELIVERIES_SUBJECT",
    "NOTIFY_CONSUMER",
    "NOTIFY_DELIVER",
    "SCHEDULES_BUCKET",
    "SESSIONS_BUCKET",
    "SNAPSHOTS_BUCKET",
    "TRIGGERS_STREAM",
    "TRIGGER_CONSUMER",
    "TRIGGER_KEYS_BUCKET",
    "TRIGGER_LOG_STREAM",
    "TRIGGER_LOG_SUBJECTS",
    "TRIGGER_SUBJECTS",
    "WORK_STREAM",
    "decode_token",
    "event_subject",
    "event_subject_of",
    "kv_subject",
    "kv_token",
    "legacy_event_subject",
    "log_subject",
    "log_subjects",
    "run_event_subjects",
    "run_events_subject",
    "subject_token",
    "trigger_log_subject",
    "trigger_subject",
    "trigger_target",
    "work_consumer",
    "work_subject",
]

EVENTS_STREAM: Final = "CX_EVENTS"
WORK_STREAM: Final = "CX_WORK"
LOGS_STREAM: Final = "CX_LOGS"
ADVISORIES_STREAM: Final = "CX_ADVISORIES"
DEFS_BUCKET: Final = "cx_defs"
AGENTS_BUCKET: Final = "cx_agents"
LEASES_BUCKET: Final = "cx_leases"
CHECKPOINTS_BUCKET: Final = "cx_checkpoints"
SCHEDULES_BUCKET: Final = "cx_schedules"  # services.cron: one ScheduleMark per schedule
TRIGGERS_STREAM: Final = "CX_TRIGGERS"
TRIGGER_LOG_STREAM: Final = "CX_TRIGGER_LOG"
TRIGGER_CONSUMER: Final = "triggers"
TRIGGER_KEYS_BUCKET: Final = "cx_trigger_keys"
TRIGGER_SUBJECTS: Final = "cx.trigger.>"  # all of it: a malformed subject is answered too
TRIGGER_LOG_SUBJECTS: Final = "cx.tlog.*"
AUTH_BUCKET: Final = "cx_auth"  # UI users and API tokens (services/nats/auth.py)
SESSIONS_BUCKET: Final = "cx_sessions"  # UI login sessions, expiring (SESSION_TTL)
SNAPSHOTS_BUCKET: Final = "cx_snapshots"  # an object store (its stream: OBJ_cx_snapshots)
AUDIT_STREAM: Final = "CX_AUDIT"  # core.audit records, on cx.audit.<action>
AUDIT_SUBJECTS: Final = "cx.audit.>"

# JetStream announces a work message whose deliveries ran out (max_deliver) on this core
# subject; capturing it in a stream keeps the news while no orchestrator is running.
MAX_DELIVERIES_SUBJECT: Final = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{WORK_STREAM}.*"
LOST_CONSUMER: Final = "lost_dispatches"
# On CX_EVENTS, shared by every orchestrator's notifier: each run's end to one of them.
NOTIFY_CONSUMER: Final = "notifications"  # also its queue group
NOTIFY_DELIVER: Final = "cx.notify.deliver"  # where that (push) consumer delivers

ALL_EVENTS: Final = "cx.ev.>"  # both layouts
EVENT_SUBJECTS: Final = "cx.ev.*.*.*"  # cx.ev.<shard>.<run_id>.<event type>
# Where events were stored before their subject named their type: still read, never written.
EVENT_SUBJECTS_LEGACY: Final = "cx.ev.*.*"
CANCEL_PREFIX: Final = "cx.cancel"

# Headers (nats.js.api.Header spells the standard ones; plain strings keep this module free of
# nats imports and usable by tests that check names only).
MSG_ID: Final = "Nats-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQUENCE: Final = "Nats-Expected-Last-Subject-Sequence"
# The subject (a last-token wildcard allowed) that the expected sequence above is about, instead
# of the published one: a run's events of every type (nats-server 2.11+).
EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: Final = "Nats-Expected-Last-Subject-Sequence-Subject"
KV_OPERATION: Final = "KV-Operation"
MARKER_REASON: Final = "Nats-Marker-Reason"
CX_STREAM_HEADER: Final = "Cx-Stream"  # on log chunks: stdout or stderr
SOURCE_HEADER: Final = "Cx-Source"  # on definitions: the file they came from

# -- subject and key tokens ---------------------------------------------------------------------
# A subject token may not contain '.', '*', '>' or whitespace; KV keys allow only
# [-/_=.a-zA-Z0-9]. Anything outside the safe set is written as '=XX' per UTF-8 byte ('=' itself
# included), which is reversible and leaves ordinary ids untouched.

_SUBJECT_SAFE = re.compile(r"[-_:A-Za-z0-9]+")
_KV_SAFE = re.compile(r"[-_A-Za-z0-9]+")
_ESCAPE = re.compile(r"=([0-9A-F]{2})")


def _escape(value: str, safe: re.Pattern[str]) -> str:
    if safe.fullmatch(value):
        return value
    if not value:
        raise ValueError("an empty string cannot be a subject token or key")
    out = []
    for char in value:
        if safe.fullmatch(char):
            out.append(char)
        else:
            out.extend(f"={b:02X}" for b in char.encode())
    return "".join(out)


def subject_token(value: str) -> str:
    """`value` as one NATS subject token (task ids may contain ':', which is legal)."""
    return _escape(value, _SUBJECT_SAFE)


def kv_token(value: str) -> str:
    """`value` as one KV key token."""
    return _escape(value, _KV_SAFE)


def decode_token(token: str) -> str:
    """Inverse of `subject_token` and `kv_token`."""
    if "=" not in token:
        return token
    out = bytearray()
    for i, part in enumerate(_ESCAPE.split(token)):
        # split() with one group alternates: text, hex, text, hex, ...
        out.extend(bytes([int(part, 16)]) if i % 2 else part.encode())
    return out.decode(errors="replace")


# -- subjects -----------------------------------------------------------------------------------


def event_subject(run_id: str, kind: str) -> str:
    """Where an event of type `kind` (its tag, e.g. `TaskSucceeded`) of the run is appended."""
    return f"cx.ev.{shard_of(run_id)}.{subject_token(run_id)}.{subject_token(kind)}"


def event_subject_of(event: Event) -> str:
    """Where `event` is appended: its run's subject for its type."""
    return event_subject(event.run_id, str(type(event).__struct_config__.tag))


def run_events_subject(run_id: str) -> str:
    """Every event of the run appended in this layout (what a conditional append is about)."""
    return f"cx.ev.{shard_of(run_id)}.{subject_token(run_id)}.*"


def legacy_event_subject(run_id: str) -> str:
    """Where the run's events were appended before the subject named the event type."""
    return f"cx.ev.{shard_of(run_id)}.{subject_token(run_id)}"


def run_event_subjects(run_id: str) -> tuple[str, str]:
    """Every event of the run, in either layout (they do not overlap: a consumer may filter on
    both)."""
    return legacy_event_subject(run_id), run_events_subject(run_id)


def work_subject(queue: str) -> str:
    return f"cx.work.{subject_token(queue)}"


def work_consumer(queue: str) -> str:
    """The durable pull consumer shared by every agent of `queue`."""
    return f"work_{kv_token(queue)}"


def log_subject(run_id: str, task_id: str, attempt: int) -> str:
    return f"cx.log.{subject_token(run_id)}.{subject_token(task_id)}.{attempt}"


def log_subjects(run_id: str, task_id: str, attempt: int | None) -> str:
    """The log subject of one attempt, or a wildcard over every attempt."""
    token = "*" if attempt is None else str(attempt)
    return f"cx.log.{subject_token(run_id)}.{subject_token(task_id)}.{token}"


def kv_subject(bucket: str, key: str) -> str:
    return f"$KV.{bucket}.{key}"


def trigger_subject(kind: str, target: str) -> str:
    """Where a trigger for an outcome (`task`) or a DAG is published."""
    return f"cx.trigger.{'task' if kind == 'outcome' else 'dag'}.{subject_token(target)}"


def trigger_target(subject: str) -> tuple[Literal["outcome", "dag"], str] | None:
    """(kind, target) a trigger subject names; None when it is not one."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[:2] != ["cx", "trigger"] or parts[2] not in ("task", "dag"):
        return None
    try:
        target = decode_token(parts[3])
    except ValueError:
        return None
    return ("outcome" if parts[2] == "task" else "dag"), target


def trigger_log_subject(rejected: bool) -> str:
    return "cx.tlog.rejected" if rejected else "cx.tlog.accepted"
