"""`ftdeploy tenant add|policy`: tenants and their deployment policy."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from registry import records
from registry.db import unit_of_work
from registry.models import Metric, Strategy
from registry.tenants import PolicyChanges, create_tenant, find_tenant, get_policy, set_policy
from worker.cli import output

if TYPE_CHECKING:
    from worker.cli.main import Commands


def add_commands(commands: Commands) -> None:
    tenant = commands.group("tenant", "tenants and their policy")
    add = tenant.command("add", cmd_tenant_add, "create a tenant")
    add.add_argument("slug")
    _policy_options(add)
    policy = tenant.command("policy", cmd_tenant_policy, "show or change a tenant's policy")
    policy.add_argument("slug")
    _policy_options(policy)


def _policy_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strategy", choices=[s.value for s in Strategy])
    parser.add_argument("--canary-percent", type=int, metavar="N")
    parser.add_argument("--steps", metavar="10,25,50,100", help="progressive canary steps")
    parser.add_argument("--auto-promote", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--threshold", type=float, metavar="X", help="0..1, default 0.95")
    parser.add_argument("--metric", choices=[m.value for m in Metric])
    parser.add_argument("--min-samples", type=int, metavar="N")
    parser.add_argument("--bake-seconds", type=int, metavar="N")
    parser.add_argument("--deadline-seconds", type=int, metavar="N")
    parser.add_argument("--auto-rollback", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--require-evaluation", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--keep-deprecated", type=int, metavar="N")


def _policy_changes(args: argparse.Namespace) -> PolicyChanges:
    steps = None
    if args.steps is not None:
        from registry.canary.analysis import parse_steps

        steps = parse_steps(args.steps)
    return PolicyChanges(
        strategy=args.strategy,
        canary_percent=args.canary_percent,
        canary_steps=steps,
        auto_promote=args.auto_promote,
        auto_promote_threshold=args.threshold,
        metric=args.metric,
        min_samples=args.min_samples,
        bake_seconds=args.bake_seconds,
        progress_deadline_seconds=args.deadline_seconds,
        auto_rollback=args.auto_rollback,
        require_evaluation=args.require_evaluation,
        keep_deprecated=args.keep_deprecated,
    )


def cmd_tenant_add(args: argparse.Namespace) -> int:
    changes = _policy_changes(args)
    with unit_of_work() as session:
        tenant = create_tenant(session, args.slug)
        policy = set_policy(session, tenant.id, changes)
        data = records.policy(tenant, policy)
    return output.emit(args, data, policy_text)


def cmd_tenant_policy(args: argparse.Namespace) -> int:
    changes = _policy_changes(args)
    with unit_of_work() as session:
        tenant = find_tenant(session, args.slug)
        policy = (
            set_policy(session, tenant.id, changes)
            if changes.given()
            else get_policy(session, tenant.id)
        )
        data = records.policy(tenant, policy)
    return output.emit(args, data, policy_text)


def policy_text(data: dict[str, Any]) -> str:
    return "\n".join(f"{key:<20} {value}" for key, value in data.items())
