"""Bad input through every door, generated with hypothesis: messages published straight to the
broker (job events, operations, evaluations, outcome batches, unknown tasks, undecodable bodies)
and command-line arguments. Each gets a clear refusal, and the database is exactly as before."""

from __future__ import annotations

import io
import re
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kombu import Exchange, Producer

from registry.validation import SLUG_PATTERN, is_openai_id
from tests.dbdump import diff, dump
from tests.faults.conftest import FaultStack
from worker import cli
from worker.app import QUEUE

pytestmark = pytest.mark.faults

# Each example drives the real worker: a few examples of many messages each, and no shrinking
# (a failure reports its example as generated; shrinking would replay it for minutes).
SLOW = settings(
    max_examples=4,
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # one stack (and worker) for all the examples
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
FAST = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
BYSTANDER = "bystander"
VERSION_RE = re.compile(r"^\s*[vV]?\d+\s*$")

# -- values --------------------------------------------------------------------------------------

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
bad_job_ids = junk.filter(lambda v: not is_openai_id(v))
good_job_ids = st.from_regex(r"ftjob-[a-z0-9]{6,12}", fullmatch=True)


def _named_tenant(value: object) -> bool:
    """Would the worker take `value` as a tenant's name (slug or id-shaped)?"""
    if not isinstance(value, str):
        return False
    return bool(SLUG_PATTERN.match(value)) or (len(value) == 36 and value.count("-") == 4)


bad_tenants = junk.filter(lambda v: v not in (None, "") and not _named_tenant(v))
unknown_slugs = st.from_regex(r"[a-z][a-z0-9-]{2,20}", fullmatch=True).filter(
    lambda s: s != BYSTANDER
)
any_tenant = st.one_of(bad_tenants, unknown_slugs, st.just(BYSTANDER))
# Version numbers the bystander does not have (it has v1..v3), and things that are no number.
bad_versions = st.one_of(
    st.integers(max_value=0),
    st.integers(min_value=4),
    junk.filter(
        lambda v: not (isinstance(v, str) and VERSION_RE.match(v)) and not isinstance(v, int)
    ),
)
outcome_record = st.dictionaries(
    st.sampled_from(["tenant", "model", "success", "score", "latency_ms", "count", "at", "x"]),
    junk,
    max_size=7,
).map(lambda r: {**r, "tenant": r.get("tenant") if r.get("tenant") != BYSTANDER else "nobody"})

# -- broker messages -----------------------------------------------------------------------------

Message = tuple[str, tuple[Any, ...], dict[str, Any]]

job_events = st.one_of(
    st.tuples(bad_job_ids).map(lambda a: ("ftdeploy.job_finished", a, {})),
    st.tuples(good_job_ids, bad_tenants).map(lambda a: ("ftdeploy.job_finished", a, {})),
    st.tuples(bad_job_ids, junk).map(
        lambda a: ("ftdeploy.job_finished", (a[0],), {"tenant": a[1]})
    ),
)
operations = st.one_of(
    st.tuples(any_tenant, bad_versions, junk).map(lambda a: ("ftdeploy.promote", a, {})),
    # (None is not bad: it asks for the default, 100%.)
    st.tuples(
        any_tenant,
        st.integers(1, 3),
        junk.filter(lambda p: p is not None and p not in range(1, 101)),
    ).map(lambda a: ("ftdeploy.promote", a, {})),
    st.tuples(st.one_of(bad_tenants, unknown_slugs)).map(lambda a: ("ftdeploy.rollback", a, {})),
    st.tuples(any_tenant, st.one_of(junk.filter(lambda v: v is not None), st.uuids().map(str))).map(
        lambda a: (
            ("ftdeploy.rollback", (a[0],), {"operation_id": a[1]})
            if a[0] == BYSTANDER
            else ("ftdeploy.rollback", a, {})
        )
    ),
)
others = st.one_of(
    st.tuples(st.one_of(junk, st.uuids().map(str))).map(
        lambda a: ("ftdeploy.evaluation_recorded", a, {})
    ),
    st.tuples(st.one_of(junk, st.lists(outcome_record, max_size=5))).map(
        lambda a: ("ftdeploy.record_outcomes", a, {})
    ),
)
misfits = st.one_of(  # wrong arity, unknown keywords, unknown tasks: Celery itself refuses
    st.tuples(junk, junk, junk).map(lambda a: ("ftdeploy.job_finished", a, {})),
    st.tuples(bad_job_ids, junk).map(lambda a: ("ftdeploy.job_finished", (a[0],), {"bogus": a[1]})),
    st.tuples(junk).map(lambda a: ("ftdeploy.no_such_task", a, {})),
)
messages = st.one_of(job_events, operations, others, misfits)


def _publish_undecodable(stack: FaultStack) -> None:
    """Bodies no task can come from: pickle (not accepted), garbage, JSON without task headers."""
    from worker.app import app

    with app.connection_for_write() as connection:
        producer = Producer(connection, exchange=Exchange(QUEUE, "direct"), routing_key=QUEUE)
        producer.publish(
            b"\x80\x04\x95garbage", content_type="application/x-python-serialize",
            content_encoding="binary",
        )  # fmt: skip
        producer.publish(b"{not json", content_type="application/json", content_encoding="utf-8")
        producer.publish({"hello": "world"}, serializer="json")


def _drained(stack: FaultStack) -> bool:
    broker = redis.Redis.from_url(stack.broker_url)
    try:
        return broker.llen(QUEUE) == 0 and broker.hlen("unacked") == 0
    finally:
        broker.close()


def _log(stack: FaultStack) -> str:
    return stack.workers[0].log_path.read_text(errors="replace")


@SLOW
@given(batch=st.lists(messages, min_size=10, max_size=25))
def test_bad_messages_straight_to_the_broker(stack: FaultStack, batch: list[Message]) -> None:
    from worker.app import app

    if not stack.workers:
        stack.worker()
    before, seen = dump(stack.database_url), len(_log(stack))
    for name, args, kwargs in batch:
        app.send_task(name, args=args, kwargs=kwargs)
    _publish_undecodable(stack)
    stack.wait(lambda: _drained(stack), 60, "the worker to get through the bad messages")

    after = dump(stack.database_url)
    assert after == before, diff(before, after)
    # A clear refusal from every task that could be called at all: none did any work, none
    # failed with anything but Celery's own refusal of a call that does not fit the signature.
    log = _log(stack)[seen:]
    for sign in ("'status': 'done'", "'status': 'succeeded'", "internal error"):
        assert sign not in log, log
    assert not re.search(r"'recorded': [1-9]", log), log
    for line in log.splitlines():
        if "raised unexpected" in line:
            assert "TypeError" in line and "argument" in line, line
    assert stack.workers[0].process is not None and stack.workers[0].process.poll() is None


def test_the_queue_moves_on_after_bad_messages(stack: FaultStack) -> None:
    """After a flood of bad messages, a good event is handled as usual."""
    from worker.app import app

    stack.worker()
    flood: list[Message] = [
        ("ftdeploy.job_finished", (None,), {}),
        ("ftdeploy.job_finished", ("ftjob-x", 42), {}),
        ("ftdeploy.promote", (BYSTANDER, "v0", 50), {}),
        ("ftdeploy.no_such_task", (), {}),
    ]
    for name, args, kwargs in flood:
        app.send_task(name, args=args, kwargs=kwargs)
    _publish_undecodable(stack)
    assert cli.main(["tenant", "add", "after-flood", "--no-require-evaluation"]) == 0
    stack.fake.add_job("ftjob-after-flood", statuses=("succeeded",), tenant="after-flood")
    assert cli.main(["job-finished", "ftjob-after-flood"]) == 0
    assert stack.wait_ended(["ftjob-after-flood"], 60)["ftjob-after-flood"].state == "done"
    stack.check(accepted=["ftjob-after-flood"])


# -- command-line arguments ----------------------------------------------------------------------

fresh_slugs = st.from_regex(r"new-[a-z0-9]{4,10}", fullmatch=True)
bad_policy_options = st.one_of(
    st.integers(max_value=0).map(lambda n: ["--canary-percent", str(n)]),
    st.integers(min_value=100).map(lambda n: ["--canary-percent", str(n)]),
    st.integers(max_value=0).map(lambda n: ["--min-samples", str(n)]),
    st.integers(max_value=-1).map(lambda n: ["--bake-seconds", str(n)]),
    st.integers(max_value=0).map(lambda n: ["--deadline-seconds", str(n)]),
    st.integers(max_value=-1).map(lambda n: ["--keep-deprecated", str(n)]),
    st.one_of(
        st.floats(min_value=1.0001, allow_infinity=True),
        st.floats(max_value=-0.0001, allow_infinity=True),
        st.just(float("nan")),
    ).map(lambda x: ["--threshold", str(x)]),
    st.text(max_size=20)
    .filter(lambda t: t not in ("immediate", "canary", "blue_green"))
    .map(lambda t: ["--strategy", t]),
    st.text(alphabet="0123456789,-. x", max_size=15)
    .filter(lambda t: not re.fullmatch(r"\d+(,\d+)*", t))
    .map(lambda t: ["--steps", t]),
    st.text(max_size=20)
    .filter(lambda t: not re.fullmatch(r"\s*[-+]?\d+\s*", t))
    .map(lambda t: ["--canary-percent", t]),
)
text_args = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=30
)
argv_strategy = st.one_of(
    st.tuples(text_args.filter(lambda s: not SLUG_PATTERN.match(s))).map(
        lambda a: ["tenant", "add", a[0]]
    ),
    st.tuples(fresh_slugs, st.lists(bad_policy_options, min_size=1, max_size=3)).map(
        lambda a: ["tenant", "add", a[0], *[x for option in a[1] for x in option]]
    ),
    st.lists(bad_policy_options, min_size=1, max_size=3).map(
        lambda options: ["tenant", "policy", BYSTANDER, *[x for o in options for x in o]]
    ),
    st.tuples(st.one_of(text_args, st.just(BYSTANDER)), text_args)
    .filter(lambda a: not VERSION_RE.match(a[1]) or a[0] != BYSTANDER)
    .map(lambda a: ["promote", a[0], a[1]]),
    st.tuples(
        st.integers(1, 3), st.one_of(st.integers(max_value=0), st.integers(min_value=101))
    ).map(lambda a: ["promote", BYSTANDER, str(a[0]), "--traffic", str(a[1])]),
    st.tuples(text_args.filter(lambda s: s != BYSTANDER)).map(lambda a: ["rollback", a[0]]),
    st.tuples(text_args.filter(lambda s: not is_openai_id(s))).map(
        lambda a: ["job-finished", a[0]]
    ),
    st.tuples(good_job_ids, text_args.filter(lambda s: s not in ("", BYSTANDER))).map(
        lambda a: ["job-finished", a[0], "--tenant", a[1]]
    ),
    st.tuples(
        st.one_of(good_job_ids, text_args),
        st.sampled_from(["approve", "review", "reject"]),
        st.lists(text_args, max_size=3),
    ).map(
        lambda a: (
            ["evaluation", "record", a[0], "--recommendation", a[1], "--no-resume"]
            + [x for metric in a[2] for x in ("--metric", metric)]
        )
    ),
    st.tuples(text_args.filter(lambda s: s not in ("approve", "review", "reject"))).map(
        lambda a: ["evaluation", "record", "ftjob-abc123", "--recommendation", a[0]]
    ),
)


@FAST
@given(argv=argv_strategy)
def test_bad_command_line_arguments(stack: FaultStack, argv: list[str]) -> None:
    before = dump(stack.database_url)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exit:  # argparse's own refusal (usage, exit status 2)
            code = exit.code if isinstance(exit.code, int) else 2
    assert code != 0, (argv, out.getvalue())
    message = err.getvalue()
    assert "error" in message and "Traceback" not in message, (argv, message)
    after = dump(stack.database_url)
    assert after == before, (argv, diff(before, after))
    assert _drained(stack)  # nothing was queued either
