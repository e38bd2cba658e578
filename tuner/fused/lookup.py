"""knn and features configurations evaluated many at once: one embedding and one neighbour table per pass.

A knn config's score is a vote over a neighbour table that depends only on the backbone, the validation
scheme and the table kind its metric and normalisation need (`neighbours.table_kind`): every k and vote
weighting over one table is a look-up of well under a millisecond, where a Ray trial costs 0.1-0.4 s. A
features config is a classifier fitted on one embedding (and its normalisation). So configurations that
agree on the parameters not marked `Param(fusable=True)` (knn: with metric and normalisation counted by
their table kind) are evaluated in one pass, each reported as its trial alone would report it.
"""
from __future__ import annotations

import time
from typing import Callable

from tuner.errors import UserError
from tuner.families.base import DataInfo, Family, RunContext
from tuner.families.features import FeaturesLearner
from tuner.families.knn import KnnLearner, check_k
from tuner.families.measure import size_and_speed
from tuner.fused.group import MemberReport, MemberSpec
from tuner.fused.grouping import split_keys
from tuner.metrics import proba_metrics
from tuner.neighbours import table_kind, vote


def lookup_signature(family: Family, config: dict) -> tuple:
    """The pass a knn / features config belongs to."""
    cfg = family.resolve(config)
    keys = [k for k in split_keys(family) if k not in ("metric", "normalize") or family.name != "knn"]
    sig = tuple((k, repr(cfg[k])) for k in keys)
    if family.name == "knn":
        sig += (("table", table_kind(cfg["metric"], cfg["normalize"])),)
    return (family.name,) + sig


def evaluate(family: Family, members: list[MemberSpec], data, info: DataInfo,
             ctx: RunContext | None = None) -> list[MemberReport]:
    """Every member's one report (in the order given), a pass per signature; a member whose config cannot
    work (k above the number of references) gets its error, as its trial would fail with it."""
    passes: dict[tuple, list[MemberSpec]] = {}
    for spec in members:
        passes.setdefault(lookup_signature(family, spec.config), []).append(spec)
    run: Callable = {"knn": _knn_pass, "features": _features_pass}[family.name]
    reports: dict[str, MemberReport] = {}
    for specs in passes.values():
        t0 = time.perf_counter()
        done = run(family, specs, data, info, ctx or RunContext())
        share = (time.perf_counter() - t0) / len(specs)  # each config's part of the pass
        for r in done:
            if r.metrics is not None:
                r.metrics["epoch_time_s"] = share
            reports[r.key] = r
    return [reports[s.key] for s in members]


def _knn_pass(family: Family, specs: list[MemberSpec], data, info: DataInfo, ctx: RunContext) -> list[MemberReport]:
    cfgs = [family.resolve(s.config) for s in specs]
    lead = family.learner(cfgs[0], info, ctx)
    assert isinstance(lead, KnnLearner)  # _knn_pass is for the knn family only
    extra = 1 if cfgs[0]["validation"] == "loo" else 0
    lead.embed(data)
    n = len(lead.references()[0]) + (len(data.y_val) if extra else 0)  # the references scoring_table will hold
    ks = [int(c["k"]) for c in cfgs if int(c["k"]) + extra <= n]
    table, y_eval = lead.scoring_table(data, max(ks)) if ks else (None, None)
    y_refs = lead.references()[1]  # after scoring_table: with validation "loo" the validation images join them
    measured = _knn_measured(family, cfgs, ks, data, info, ctx)
    out = []
    for spec, cfg in zip(specs, cfgs):
        try:
            check_k(int(cfg["k"]), extra, n)
        except UserError as exc:
            out.append(MemberReport(spec.key, None, True, str(exc)))
            continue
        assert table is not None and y_eval is not None  # check_k passed: this k is in ks
        proba = vote(table, y_refs, int(cfg["k"]), cfg["metric"], cfg["weights"], info.num_classes)
        val_loss, val_acc = proba_metrics(proba, y_eval)
        out.append(MemberReport(spec.key, {"epoch": 1, "val_loss": val_loss, "val_accuracy": val_acc,
                                           "epoch_time_s": 0.0, **measured}, True))
    return out


def _knn_measured(family: Family, cfgs: list[dict], ks: list[int], data, info: DataInfo, ctx: RunContext) -> dict:
    """The pass's size and speed, as a trial of its first workable config measures them: every config of a
    pass has the same references and neighbour search (`KnnLearner.latency_key`), so the same figures."""
    if not ks:
        return {}
    learner = family.learner(next(c for c in cfgs if int(c["k"]) in ks), info, ctx)
    assert isinstance(learner, KnnLearner)
    learner.scoring_table(data)  # the references a fitted trial holds (its table comes from the cache)
    return size_and_speed(learner, data.x_val)


def _features_pass(family: Family, specs: list[MemberSpec], data, info: DataInfo,
                   ctx: RunContext) -> list[MemberReport]:
    lead = family.learner(specs[0].config, info, ctx)
    assert isinstance(lead, FeaturesLearner)  # _features_pass is for the features family only
    feats = lead.embed(data)
    out = []
    for spec in specs:
        learner = family.learner(spec.config, info, ctx)
        assert isinstance(learner, FeaturesLearner)
        learner.adopt(lead)
        try:
            metrics = learner.fit_embedded(feats, data, time.perf_counter())
        except UserError as exc:
            out.append(MemberReport(spec.key, None, True, str(exc)))
            continue
        out.append(MemberReport(spec.key, {**metrics, **size_and_speed(learner, data.x_val)}, True))
    return out

