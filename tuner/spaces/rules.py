"""What one block's bounds cannot say: objectives and constraints, names set twice in a conditional tree, the
family's check of every level of it, and the sampler / scheduler combinations their registry flags rule out."""
from __future__ import annotations

from typing import Any

from tuner.errors import UserError
from tuner.search.samplers import DEFAULT_SAMPLER, SAMPLERS
from tuner.search.schedulers import SCHEDULERS
from tuner.spaces.distributions import Conditional, finite, grid_configs, is_searched, same_value
from tuner.spaces.experiment import Experiment
from tuner.spaces.warm import check_warm_start


METRICS = ("val_accuracy", "val_loss", "train_accuracy", "train_loss")


# what an objective or a constraint may name: the per-epoch metrics and what the trial measures once
OBJECTIVES = METRICS + ("num_params", "latency_ms", "latency_ms_b64", "train_time_s")


CONSTRAINT_SIDES = ("min", "max")


def parse_objectives(raw: dict, file: str) -> tuple:
    """`metric`/`mode`: one each, or equal-length lists for a multi-objective search."""
    metric, mode = raw.get("metric", "val_accuracy"), raw.get("mode", "max")
    if isinstance(metric, list) or isinstance(mode, list):
        metrics = metric if isinstance(metric, list) else [metric]
        modes = mode if isinstance(mode, list) else [mode] * len(metrics)
        if len(metrics) < 1 or len(modes) != len(metrics):
            raise UserError(f"{file}: mode needs one entry per metric ({len(metrics)} metrics, {len(modes)} modes)")
        if len(set(map(str, metrics))) != len(metrics):
            raise UserError(f"{file}: metric lists {metrics!r}: each objective once")
        for i, (m, d) in enumerate(zip(metrics, modes)):
            one_of(file, f"metric[{i}]", m, OBJECTIVES)
            one_of(file, f"mode[{i}]", d, ("max", "min"))
        return (metrics, modes) if len(metrics) > 1 else (metrics[0], modes[0])
    one_of(file, "mode", mode, ("max", "min"))
    one_of(file, "metric", metric, OBJECTIVES)
    return metric, mode


def parse_constraints(raw: Any, file: str) -> dict[str, dict]:
    """`constraints: {num_params: {max: 5.0e+6}}`: a trial outside any bound is infeasible."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{file}: constraints must be a mapping such as {{latency_ms: {{max: 10}}}}, got {raw!r}")
    out = {}
    for name, bound in raw.items():
        one_of(file, f"constraints.{name}: metric", name, OBJECTIVES)
        if not isinstance(bound, dict) or not bound or set(bound) - set(CONSTRAINT_SIDES):
            raise UserError(f"{file}: constraints.{name} takes {{max: X}} and/or {{min: X}}, got {bound!r}")
        for side, v in bound.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not finite(v):
                raise UserError(f"{file}: constraints.{name}.{side} must be a finite number, got {v!r}")
        if "min" in bound and "max" in bound and bound["min"] > bound["max"]:
            raise UserError(f"{file}: constraints.{name}: min {bound['min']} > max {bound['max']}")
        out[name] = {k: float(v) for k, v in bound.items()}
    return out


def one_of(file: str, key: str, value: Any, choices) -> None:
    if value not in choices:
        raise UserError(f"{file}: {key} is {value!r}; choose one of {', '.join(map(str, choices))}")


def _occurrences(space: dict, path: tuple = ()):
    """(name, path) for every name the tree sets; a path is the ((choice, option), ...) that leads to it."""
    for k, node in space.items():
        yield k, path
        if isinstance(node, Conditional):
            for opt, sub in node.options:
                yield from _occurrences(sub, path + ((k, opt),))


def _exclusive(a: tuple, b: tuple) -> bool:
    """Whether no trial can reach both paths: they part at one choice, into different options of it."""
    for (ka, oa), (kb, ob) in zip(a, b):
        if ka != kb:
            return False  # two different choices: a trial draws both
        if not same_value(oa, ob):
            return True
    return False  # one path leads into the other (or they are the same): both are reached together


def check_branch_names(space: dict, file: str) -> None:
    """A trial's config holds one value per name: a name may be set in several options of one choice (only one
    is drawn), never in two places a trial can reach at once (outside and inside a branch, or in branches of
    two different choices, where the later draw silently replaced the earlier one)."""
    seen: dict[str, list[tuple]] = {}
    for name, path in _occurrences(space):
        for other in seen.get(name, []):
            if not _exclusive(other, path):
                here, there = (f"space.{''.join(f'{k}.choice.{o}.' for k, o in p)}{name}" for p in (other, path))
                raise UserError(f"{file}: {here} and {there} both set {name!r}, and one trial can draw both; "
                                f"give it in one place only (or in options of one choice)")
        seen.setdefault(name, []).append(path)


def validate_tree(family, constants: dict, searched: dict, file: str, where: str) -> None:
    """The family checks each level: a conditional's option values as a choice, then every option's
    sub-space on top of the constants (a key in several branches is checked in each with its own range)."""
    flat = {k: (v.as_choice() if isinstance(v, Conditional) else v) for k, v in searched.items()}
    family.validate(constants, flat, file)
    for k, node in searched.items():
        if not isinstance(node, Conditional):
            continue
        for opt, sub in node.options:
            here = f"{file}: {where}.{k}.choice.{opt}"
            consts = {**constants, k: opt, **{n: v for n, v in sub.items() if not is_searched(v)}}
            validate_tree(family, consts, {n: v for n, v in sub.items() if is_searched(v)},
                           here, where)


def _has_categorical_only(exp: Experiment) -> bool:
    return all(d.is_categorical for d in exp.searched.values())


def check_search_power(exp: Experiment, file: str, ran: bool = False) -> None:
    """Samplers, schedulers, objectives, budgets and warm starts that cannot work together: said before Ray.
    What a sampler or scheduler can do is its registry entry's flags (tuner.search.samplers, .schedulers)."""
    s = exp.search
    if s.sampler != DEFAULT_SAMPLER and s.algorithm != "optuna":
        raise UserError(f"{file}: search.sampler {s.sampler} is for algorithm: optuna (algorithm is {s.algorithm})")
    if s.algorithm == "optuna":
        _check_sampler(exp, SAMPLERS[s.sampler], file)
    _check_scheduler(exp, SCHEDULERS[exp.scheduler.name], file)
    if exp.constraints and s.algorithm != "optuna":
        raise UserError(f"{file}: constraints need search.algorithm optuna (its sampler steers away from "
                        f"infeasible trials); algorithm is {s.algorithm}")
    if s.warm_start is not None and not (ran and isinstance(s.warm_start, str)):
        check_warm_start(exp, file)  # a folder a search ran with is not read again (parse_experiment's ran)
    if s.fuse == "auto":
        s.fuse = auto_fuse(exp)  # resolved here, once: space.yaml, --resume and the driver see the number
    elif s.fuse:
        problem = fuse_problem(exp)
        if problem:
            raise UserError(f"{file}: search.fuse: {problem}")


FUSE_SCHEDULERS = ("fifo", "asha")  # the rules a fused group applies to its members itself (tuner.fused.rungs)
# `fuse: auto` with a time budget and no num_samples: the configurations are not known in advance
AUTO_FUSE_UNKNOWN = 16
# `fuse: auto` with algorithm optuna never groups more than this: the sampler asks a group's configurations
# together, without the results of one another, so a bigger group is closer to random search. A grid or
# random search learns nothing between trials: no cap. (tuner.fused.grouping's memory budget may cap further.)
AUTO_FUSE_MAX = 32


def auto_fuse(exp: Experiment) -> int:
    """`search.fuse: auto`: 0 (one configuration per trial) where a fused search cannot stand for this space
    (fuse_problem); else the planned configurations spread over `max_concurrent` groups, as in
    benchmarks/bench_fused.py, at most AUTO_FUSE_MAX a group for an Optuna sampler; a group of one gains
    nothing."""
    if fuse_problem(exp):
        return 0
    planned = planned_configs(exp)
    size = AUTO_FUSE_UNKNOWN if planned is None else -(-planned // exp.search.max_concurrent)
    if exp.search.algorithm == "optuna":
        size = min(size, AUTO_FUSE_MAX)
    size = min(size, 1024)  # the bound an explicit N has
    return size if size >= 2 else 0


def auto_fuse_off(exp: Experiment) -> str | None:
    """Why `search.fuse: auto` left this search unfused (one configuration per trial), for validate's and the
    search's console; None when the file did not say auto or auto fused. space.yaml has no `fuse` then."""
    said = (exp.raw.get("search") or {}).get("fuse") if isinstance(exp.raw.get("search"), dict) else None
    if said != "auto" or exp.search.fuse:
        return None
    problem = fuse_problem(exp)
    why = problem.split(";")[0] if problem else "a group would hold one configuration"
    return f"search.fuse: auto trains one configuration per trial here ({why})"


def planned_configs(exp: Experiment) -> int | None:
    """How many configurations the search runs: a grid's points times its passes, else num_samples; None
    when only the time budget ends it."""
    if exp.search.algorithm == "grid":
        return len(grid_configs(exp.searched, exp.search.grid_points)) * max(exp.num_samples, 1)
    return exp.num_samples if exp.num_samples > 0 else None


def fuse_problem(exp: Experiment) -> str | None:
    """Why search.fuse cannot apply (the end of a message naming search.fuse), or None. A group stands for its
    members only with a family whose configs fuse, a scheduler that decides per configuration, one metric,
    and no tracking callback (which hears of Ray's trials)."""
    from tuner.families import get_family

    family = get_family(exp.family)
    lookup = family.name in ("knn", "features")
    if not lookup and not family.fusable(family.resolve(dict(exp.constants))):
        return (f"family {family.name} does not train fused with these fixed values (linear, mlp, cnn, a frozen "
                f"transfer head on pretrained weights, knn and features do); remove search.fuse")
    if exp.scheduler.name not in FUSE_SCHEDULERS:
        return (f"scheduler {exp.scheduler.name} decides per Ray trial, not per fused member; "
                f"use scheduler {' or '.join(FUSE_SCHEDULERS)}, or remove search.fuse")
    if exp.multi or exp.constraints:
        return "a fused search has one metric and no constraints; remove search.fuse"
    if exp.search.warm_start is not None:
        return "does not go with search.warm_start; remove one of the two"
    if exp.conditional:
        branching = next(k for k, v in exp.searched.items() if isinstance(v, Conditional))
        return (f"does not go with a conditional choice in space: ({branching}); make it a plain choice, or "
                f"remove search.fuse")
    if exp.tracking is not None and exp.tracking.any:
        return "tracking: records Ray's trials, not fused members; remove one of the two"
    return None


def _names(entries: dict, flag: str) -> str:
    """The registered names whose `flag` holds, for a message's "use ..."."""
    names = [n for n, e in entries.items() if getattr(e, flag)]
    return names[-1] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _check_sampler(exp: Experiment, entry, file: str) -> None:
    name = f"search.sampler {entry.name}"
    if not entry.single_objective and not exp.multi:
        raise UserError(f"{file}: {name} is a multi-objective sampler; give metric a list "
                        f"(e.g. [val_accuracy, latency_ms]) or use {DEFAULT_SAMPLER}")
    if entry.needs_numeric and exp.searched and _has_categorical_only(exp):
        raise UserError(f"{file}: {name} searches numbers only and every parameter in space: is a choice; use "
                        f"{DEFAULT_SAMPLER}, or make a parameter uniform/loguniform/int")
    if not entry.conditional and exp.conditional:
        raise UserError(f"{file}: {name} needs one fixed set of parameters, and space: has a conditional choice; "
                        f"use {_names(SAMPLERS, 'conditional')}")
    if not entry.multi_objective and exp.multi:
        raise UserError(f"{file}: {name} has one objective; use {_names(SAMPLERS, 'multi_objective')} for "
                        f"metric {exp.metric!r}")


def _check_scheduler(exp: Experiment, entry, file: str) -> None:
    if exp.multi and not entry.multi_objective:
        raise UserError(f"{file}: scheduler.name {entry.name} stops or copies trials by one metric, and metric is "
                        f"a list; use {_names(SCHEDULERS, 'multi_objective')} (which stop trials, if at all, by "
                        f"the first objective, {exp.metrics[0]})")
    if exp.conditional and not entry.conditional:
        raise UserError(f"{file}: scheduler {entry.name} needs one fixed set of parameters; a conditional choice "
                        f"in space: cannot go with it")
