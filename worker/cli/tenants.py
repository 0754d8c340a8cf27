"""`ftdeploy tenant add|policy|list|pause|resume`: tenants and their deployment policy."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from registry import records
from registry.db import unit_of_work
from registry.models import DeploymentPolicy, Metric, ModelVersion, Strategy, in_production
from registry.tenants import (
    PolicyChanges,
    create_tenant,
    find_tenant,
    get_policy,
    list_tenants,
    pause_tenant,
    resume_tenant,
    set_policy,
)
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
    policy.add_argument("--reason", help="why (kept in the audit trail)")
    tenant.command("list", cmd_tenant_list, "every tenant, its strategy, split and pause")
    pause = tenant.command(
        "pause", cmd_tenant_pause, "hold a tenant's auto-promotion (traffic stays as it is)"
    )
    pause.add_argument("slug")
    pause.add_argument("--reason", required=True, help="why (kept in the audit trail)")
    output.add_actor(pause)
    resume = tenant.command("resume", cmd_tenant_resume, "let auto-promotion act again")
    resume.add_argument("slug")
    resume.add_argument("--reason", help="why (kept in the audit trail)")
    output.add_actor(resume)


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
    parser.add_argument(
        "--require-evaluation",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="deploy only after an evaluation is recorded (on for a new tenant)",
    )
    parser.add_argument("--keep-deprecated", type=int, metavar="N")
    output.add_actor(parser)


def _policy_changes(args: argparse.Namespace) -> PolicyChanges:
    steps = None
    if args.steps is not None:
        from registry.canary.checks import parse_steps

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
    actor = output.actor(args)
    with unit_of_work() as session:
        tenant = create_tenant(session, args.slug, actor=actor)
        policy = set_policy(session, tenant.id, changes, actor=actor)
        data = records.policy(tenant, policy)
    return output.emit(args, data, policy_text)


def cmd_tenant_policy(args: argparse.Namespace) -> int:
    changes = _policy_changes(args)
    actor = output.actor(args)
    with unit_of_work() as session:
        tenant = find_tenant(session, args.slug)
        policy = (
            set_policy(session, tenant.id, changes, actor=actor, reason=args.reason)
            if changes.given()
            else get_policy(session, tenant.id)
        )
        data = records.policy(tenant, policy)
    return output.emit(args, data, policy_text)


def cmd_tenant_list(args: argparse.Namespace) -> int:
    with unit_of_work() as session:
        tenants = list_tenants(session)
        policies = {p.tenant_id: p for p in session.scalars(select(DeploymentPolicy))}
        splits: dict[Any, dict[str, int]] = {}
        for tenant_id, number, percent in session.execute(
            select(ModelVersion.tenant_id, ModelVersion.version, ModelVersion.traffic_percent)
            .where(in_production(ModelVersion.status))
            .order_by(ModelVersion.version)
        ):
            splits.setdefault(tenant_id, {})[str(number)] = percent
        data = []
        for tenant in tenants:
            policy = policies.get(tenant.id) or DeploymentPolicy()
            data.append(
                {
                    "tenant": tenant.slug,
                    "tenant_id": str(tenant.id),
                    "strategy": policy.strategy or Strategy.IMMEDIATE.value,
                    "auto_promote": bool(policy.auto_promote),
                    "require_evaluation": policy.require_evaluation is not False,
                    "paused": bool(policy.paused),
                    "paused_reason": policy.paused_reason,
                    "split": splits.get(tenant.id, {}),
                    "created_at": records.when(tenant.created_at),
                }
            )
    return output.emit(args, data, tenant_list_text)


def cmd_tenant_pause(args: argparse.Namespace) -> int:
    actor = output.actor(args)
    with unit_of_work() as session:
        tenant, policy = pause_tenant(session, args.slug, actor=actor, reason=args.reason)
        data = records.policy(tenant, policy)
    return output.emit(
        args, data, lambda d: f"paused {d['tenant']}: {d['paused_reason'] or 'no reason given'}"
    )


def cmd_tenant_resume(args: argparse.Namespace) -> int:
    actor = output.actor(args)
    with unit_of_work() as session:
        tenant, policy = resume_tenant(session, args.slug, actor=actor, reason=args.reason)
        data = records.policy(tenant, policy)
    return output.emit(args, data, lambda d: f"resumed {d['tenant']}")


def policy_text(data: dict[str, Any]) -> str:
    return "\n".join(f"{key:<20} {value}" for key, value in data.items())


def tenant_list_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no tenants yet (add one: ftdeploy tenant add SLUG)"
    return output.table(
        ["TENANT", "STRATEGY", "AUTO-PROMOTE", "EVALUATION", "SERVING", "PAUSED"],
        [
            [
                r["tenant"],
                r["strategy"],
                "on" if r["auto_promote"] else "off",
                "required" if r["require_evaluation"] else "not required",
                output.split_text(r["split"]),
                f"paused: {r['paused_reason']}" if r["paused"] else "-",
            ]
            for r in rows
        ],
    )
