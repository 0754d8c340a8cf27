"""Every failure ftdeploy reports on purpose.

One base class, one subclass per failure. Each keeps its ids as attributes and builds its own
message, so the CLI and the tasks map them to exit codes and retry decisions in one place
(`worker.outcomes` for tasks). Messages never contain secrets.
"""

from __future__ import annotations


class FtdeployError(Exception):
    """Base of every expected failure. `retryable` tells a task whether to try again later."""

    retryable = False
    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(FtdeployError):
    """An argument from outside (CLI, event, webhook, outcome) is malformed or out of range."""

    exit_code = 2

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"invalid {field}: {problem}")


class TenantNotFound(FtdeployError):
    exit_code = 3

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        super().__init__(f"tenant not found: {tenant!r}")


class TenantExists(FtdeployError):
    def __init__(self, slug: str) -> None:
        self.slug = slug
        super().__init__(f"tenant already exists: {slug!r}")


class VersionNotFound(FtdeployError):
    """The version does not exist for this tenant (it may exist for another: that is not told)."""

    exit_code = 3

    def __init__(self, tenant: str, version: int | str) -> None:
        self.tenant = tenant
        self.version = version
        super().__init__(f"tenant {tenant!r} has no version {version}")


class NothingToRollBack(FtdeployError):
    def __init__(self, tenant: str, detail: str) -> None:
        self.tenant = tenant
        super().__init__(f"nothing to roll back for tenant {tenant!r}: {detail}")


class RunNotFound(FtdeployError):
    exit_code = 3

    def __init__(self, ref: str) -> None:
        self.ref = ref
        super().__init__(f"no fine-tuning run for {ref!r}")


class RunNotDeployable(FtdeployError):
    def __init__(self, job_id: str, status: str) -> None:
        self.job_id = job_id
        self.status = status
        super().__init__(f"job {job_id} is {status}: there is no fine-tuned model to deploy")


class TenantMismatch(FtdeployError):
    """The event, the run row and the job's metadata name different tenants."""

    def __init__(self, job_id: str, claims: dict[str, str]) -> None:
        self.job_id = job_id
        self.claims = claims
        told = ", ".join(f"{source} says {tenant!r}" for source, tenant in sorted(claims.items()))
        super().__init__(f"job {job_id}: tenants disagree ({told})")


class TenantUnknownForJob(FtdeployError):
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(
            f"job {job_id}: no tenant in the event, no run row and no metadata['tenant'] on the "
            "job (a webhook names only the job); create jobs with metadata={'tenant': SLUG}, "
            f"or name it: ftdeploy job-finished {job_id} --tenant SLUG"
        )


class EventClaimRefused(FtdeployError):
    """A door named a tenant for a job event that is finished or already belongs to another
    tenant: the event keeps its tenant (an event is never reassigned), the refusal is recorded."""

    def __init__(self, job_id: str, state: str, kept: str, claimed: str) -> None:
        self.job_id = job_id
        self.state = state
        self.kept = kept
        self.claimed = claimed
        super().__init__(
            f"job {job_id} ({state}) belongs to tenant {kept!r}: not reassigned to {claimed!r}; "
            f"the refusal is recorded (ftdeploy history {kept})"
        )


class OperationNotFound(FtdeployError):
    exit_code = 3

    def __init__(self, operation_id: str) -> None:
        self.operation_id = operation_id
        super().__init__(f"operation not found: {operation_id}")


class OperationNotCancellable(FtdeployError):
    """Only a queued operation can be cancelled: one that a worker is running, or that has
    ended, is refused (nothing changes)."""

    def __init__(self, operation_id: str, status: str) -> None:
        self.operation_id = operation_id
        self.status = status
        what = "a worker is running it" if status == "running" else f"it has ended ({status})"
        super().__init__(f"operation {operation_id} cannot be cancelled: {what}")


class KeyExists(FtdeployError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"a key named {name!r} already exists")


class KeyNotFound(FtdeployError):
    exit_code = 3

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no key named {name!r}")


class RoutingUnavailable(FtdeployError):
    """No split can be served for the tenant: the database cannot be read and the tenant's split
    was never read by this process (or is older than FTDEPLOY_ROUTING_MAX_STALE_SECONDS)."""

    retryable = True
    exit_code = 75

    def __init__(self, tenant: str, reason: str) -> None:
        self.tenant = tenant
        self.reason = reason
        super().__init__(f"cannot route tenant {tenant!r}: {reason}")


class InvariantViolation(FtdeployError):
    """A change would leave a tenant's production traffic at other than 100. A bug, never input."""

    exit_code = 70

    def __init__(self, tenant: str, split: dict[int, int]) -> None:
        self.tenant = tenant
        self.split = split
        super().__init__(f"traffic invariant broken for tenant {tenant!r}: {split}")


class UpstreamTransient(FtdeployError):
    """OpenAI (or the network to it) failed in a way that may pass: 429, 5xx, timeout, refused."""

    retryable = True

    def __init__(self, job_id: str, reason: str, retry_after: float | None = None) -> None:
        self.job_id = job_id
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(f"OpenAI call for job {job_id} failed, will retry: {reason}")


class UpstreamPermanent(FtdeployError):
    """OpenAI refused the request for good (400, 401, 403, 404, 422) or answered nonsense."""

    def __init__(self, job_id: str, reason: str) -> None:
        self.job_id = job_id
        self.reason = reason
        super().__init__(f"OpenAI call for job {job_id} failed for good: {reason}")


class JobNotFinished(FtdeployError):
    """The job is still running: poll again later."""

    retryable = True

    def __init__(self, job_id: str, status: str) -> None:
        self.job_id = job_id
        self.status = status
        super().__init__(f"job {job_id} is still {status}")


class PoisonEvent(FtdeployError):
    """The worker died too often while handling one event: it is given up, not tried again."""

    def __init__(self, job_id: str, crashes: int) -> None:
        self.job_id = job_id
        self.crashes = crashes
        super().__init__(f"the worker died {crashes} times while handling this event")


class JobDeadlineExceeded(FtdeployError):
    def __init__(self, job_id: str, seconds: float) -> None:
        self.job_id = job_id
        self.seconds = seconds
        super().__init__(f"job {job_id} did not finish within {seconds:g} s; giving up")


class SettingsInvalid(FtdeployError):
    """The configuration from the environment is unusable. One line per problem, each naming its
    environment variable; values are never repeated (they may be secrets)."""

    exit_code = 2

    def __init__(self, problems: list[tuple[str | None, str]]) -> None:
        self.problems = problems
        lines = [
            f"invalid setting {name}: {problem}" if name else f"invalid settings: {problem}"
            for name, problem in problems
        ]
        super().__init__("\n".join(lines) or "invalid settings")


class SchemaNotCurrent(FtdeployError):
    """The database's schema is not at the migrations' head (never migrated, or behind, or
    migrated by a newer ftdeploy)."""

    exit_code = 2

    def __init__(
        self, current: tuple[str, ...], head: tuple[str, ...], newer: bool = False
    ) -> None:
        self.current = current
        self.head = head
        self.newer = newer
        at = ", ".join(current) if current else "no ftdeploy schema"
        if newer:
            advice = "it was migrated by a newer ftdeploy; run that version (or upgrade this one)"
        else:
            advice = "run `ftdeploy db upgrade` first"
        super().__init__(
            f"the database schema is not current (database: {at}; expected: {', '.join(head)}): "
            + advice
        )


class StartRefused(FtdeployError):
    """A process refuses to start: its configuration cannot work (the message says what to set)."""

    exit_code = 2
