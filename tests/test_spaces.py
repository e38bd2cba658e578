"""The search-space grammar: every distribution, constants, fixed-over-space, overrides, and each user error."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tuner import spaces
from tuner.errors import UserError

BASE = """
name: t
dataset: {name: digits}
family: cnn
search: {algorithm: optuna, num_samples: 4}
scheduler: {name: asha, max_epochs: 3}
space:
  lr: {loguniform: [1.0e-4, 1.0e-1]}
  batch_size: {choice: [16, 32]}
  dropout: {uniform: [0.0, 0.5]}
  blocks: {int: [1, 3]}
  channels: {logint: [8, 64]}
"""


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_every_distribution_parses_to_its_kind(tmp_path):
    exp = spaces.load(write(tmp_path, BASE))
    kinds = {k: d.kind for k, d in exp.searched.items()}
    assert kinds == {"lr": "loguniform", "batch_size": "choice", "dropout": "uniform", "blocks": "int",
                     "channels": "logint"}


def test_int_bounds_are_inclusive_in_ray_domain(tmp_path):
    from tuner.search.domains import to_tune

    d = to_tune(spaces.load(write(tmp_path, BASE)).searched["blocks"])
    values = {d.sample() for _ in range(300)}
    assert values == {1, 2, 3}


def test_fixed_wins_over_space_and_set_pins_a_searched_parameter(tmp_path):
    exp = spaces.load(write(tmp_path, BASE), ["fixed.lr=0.01"])
    assert "lr" not in exp.searched
    assert exp.constants["lr"] == 0.01


def test_set_overrides_nested_keys_with_yaml_values(tmp_path):
    exp = spaces.load(write(tmp_path, BASE), ["search.num_samples=7", "space.lr={uniform: [0.1, 0.2]}",
                                              "dataset.split.seed=3"])
    assert exp.num_samples == 7
    assert exp.searched["lr"].kind == "uniform"
    assert exp.dataset.split.seed == 3


def test_exponent_floats_without_a_dot_are_numbers_in_files_and_set(tmp_path):
    # PyYAML reads YAML 1.1, where `1e-4` is the string '1e-4'; docs/using.md's own --set example must work
    exp = spaces.load(write(tmp_path, BASE), ["space.lr={loguniform: [1e-4, 1e-2]}"])
    assert exp.searched["lr"] == spaces.Distribution("loguniform", (1e-4, 1e-2))
    exp = spaces.load(write(tmp_path, BASE.replace("[1.0e-4, 1.0e-1]", "[1e-4, 1e-1]")))
    assert exp.searched["lr"] == spaces.Distribution("loguniform", (1e-4, 1e-1))
    exp = spaces.load(write(tmp_path, BASE), ["fixed.lr=1e-3"])
    assert exp.constants["lr"] == 1e-3 and isinstance(exp.constants["lr"], float)


def test_loguniform_from_zero_written_with_an_exponent_bound_names_the_real_problem(tmp_path):
    with pytest.raises(UserError, match=r"space\.lr: loguniform needs bounds > 0, got 0"):
        spaces.load(write(tmp_path, BASE), ["space.lr={loguniform: [0, 1e-2]}"])


@pytest.mark.parametrize("text, value", [
    ("1e-4", 1e-4), ("5E3", 5e3), ("-2e+5", -2e5), ("+1e5", 1e5), (".5e-3", 5e-4), ("1.0e3", 1e3),
    ("1.10", 1.1), ("1.", 1.0), ("0x1f", 31), ("1_000", 1000),   # what PyYAML already read as numbers
    ("-.5", "-.5"), ("1e", "1e"), ("e5", "e5"), ("v1e5", "v1e5"), ("1e-4a", "1e-4a"), ("1.2.3e4", "1.2.3e4"),
])
def test_only_exponent_forms_change_how_a_scalar_reads(text, value):
    got = spaces.safe_yaml(text)
    assert got == value and type(got) is type(value)


def test_a_quoted_exponent_string_stays_a_string_through_space_yaml(tmp_path):
    exp = spaces.load(write(tmp_path, BASE.replace("name: t", "name: '1e5'")))
    assert exp.name == "1e5"
    text = spaces.resolved_yaml(exp)
    assert "name: '1e5'" in text
    assert spaces.parse_experiment(spaces.safe_yaml(text)).name == "1e5"


def test_constant_in_space_is_not_searched(tmp_path):
    exp = spaces.load(write(tmp_path, BASE + "  optimizer: sgd\n"))
    assert exp.constants["optimizer"] == "sgd" and "optimizer" not in exp.searched


def test_name_defaults_to_file_stem(tmp_path):
    exp = spaces.load(write(tmp_path, BASE.replace("name: t\n", ""), "my_space.yaml"))
    assert exp.name == "my_space"


def test_grid_values_cover_continuous_ranges_for_grid_search():
    d = spaces.parse_distribution({"loguniform": [1e-4, 1e-2]}, "x")
    assert d.grid_values(3) == pytest.approx([1e-4, 1e-3, 1e-2])
    assert spaces.parse_distribution({"int": [1, 4]}, "x").grid_values(4) == [1, 2, 3, 4]


@pytest.mark.parametrize("override, fragment", [
    (["bogus=1"], "unknown key 'bogus'"),
    (["dataset.bogus=1"], "dataset.bogus"),
    (["space.depth={int: [1, 2]}"], "does not take 'depth'"),
    (["space.lr={loguniform: [0, 1]}"], "space.lr"),
    (["space.lr={uniform: [0.5, 0.1]}"], "reversed"),
    (["space.batch_size={choice: []}"], "space.batch_size"),
    (["space.lr={normal: [0, 1]}"], "unknown distribution 'normal'"),
    (["space.optimizer={choice: [sgd, lion]}"], "lion"),
    (["family=resnet"], "unknown family 'resnet'"),
    (["dataset.name=mnist"], "dataset.name"),
    (["scheduler.name=bohb"], "scheduler.name"),
    (["search.algorithm=bayes"], "search.algorithm"),
    (["dataset.split.val=1.5"], "dataset.split.val"),
    (["scheduler.grace_period=9"], "grace_period"),
    (["search.num_samples=0"], "search.num_samples"),
    (["fixed.lr={uniform: [0.1, 0.2]}"], "fixed.lr"),
    (["dataset.name=cifar10"], "dataset.root"),
    (["space.batch_size={grid: [16, 32]}"], "Optuna"),
])
def test_bad_input_is_a_user_error_naming_the_key(tmp_path, override, fragment):
    with pytest.raises(UserError) as err:
        spaces.load(write(tmp_path, BASE), override)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)



@pytest.mark.parametrize("name, refused", [("asha", True), ("median", True), ("fifo", False), ("hyperband", False),
                                           ("pbt", False)])
def test_grace_period_must_fit_in_max_epochs_only_where_the_scheduler_reads_it(tmp_path, name, refused):
    """A quick fifo run of a file whose asha waits 3 epochs: `--set scheduler.max_epochs=2` alone is enough."""
    sets = [f"scheduler.name={name}", "scheduler.grace_period=3", "scheduler.max_epochs=2"]
    if refused:
        with pytest.raises(UserError, match=r"grace_period \(3\) <= max_epochs \(2\)"):
            spaces.load(write(tmp_path, BASE), sets)
    else:
        assert spaces.load(write(tmp_path, BASE), sets).scheduler.max_epochs == 2


def test_a_distribution_named_without_its_range_is_refused_with_the_mapping_to_write(tmp_path):
    def refusal(override: str) -> str:
        with pytest.raises(UserError) as err:
            spaces.load(write(tmp_path, BASE), [override])
        return str(err.value)

    # the file's own values for the key, ready to edit; two placeholders where it has none
    assert "e.g. --set 'space.lr={loguniform: [0.0001, 0.1]}' (in" in refusal("space.lr=loguniform")
    assert "e.g. --set 'space.batch_size={choice: [16, 32]}' (in" in refusal("space.batch_size=choice")
    assert "e.g. --set 'space.momentum={uniform: [LOW, HIGH]}' with two numbers" in refusal("space.momentum=uniform")
    assert "expected a number, got 'loguniform'" in refusal("space.lr=loguniform")
    assert "e.g." not in refusal("fixed.lr=loguniform")  # a fixed value takes no distribution at all
    # a value that only shares a distribution's name is a constant where the family takes it (knn's weights)
    knn = BASE.replace("family: cnn", "family: knn").split("space:")[0] + "space:\n  k: {int: [1, 9]}\n"
    assert spaces.load(write(tmp_path, knn), ["space.weights=uniform"]).constants["weights"] == "uniform"


def test_malformed_yaml_names_the_file_and_line(tmp_path):
    p = write(tmp_path, "name: x\nspace: {lr: [\n")
    with pytest.raises(UserError, match=r"s\.yaml: not valid YAML at line"):
        spaces.load(p)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such space file"):
        spaces.load(tmp_path / "nope.yaml")


def test_suite_lists_members_relative_to_itself(tmp_path):
    write(tmp_path, BASE, "a.yaml")
    suite = spaces.load(write(tmp_path, "name: s\nsuite: [a.yaml]\n", "suite.yaml"))
    assert isinstance(suite, spaces.Suite) and suite.members == [(tmp_path / "a.yaml").resolve()]


def test_suite_with_missing_member_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="suite member 'b.yaml' not found"):
        spaces.load(write(tmp_path, "suite: [b.yaml]\n", "suite.yaml"))


def test_smoke_shrinks_to_two_trials_one_epoch_small_subset(tmp_path):
    exp = spaces.smoke(spaces.load(write(tmp_path, BASE)))
    assert (exp.num_samples, exp.scheduler.max_epochs) == (2, 1)
    assert exp.dataset.limit <= 300


def test_resolved_yaml_round_trips(tmp_path):
    import yaml

    exp = spaces.load(write(tmp_path, BASE), ["fixed.dropout=0.1"])
    again = spaces.parse_experiment(yaml.safe_load(spaces.resolved_yaml(exp)))
    assert again.searched == exp.searched and again.constants == exp.constants


# --------------------------------------------------------------------------- hostile files and fuzzing
def test_binary_garbage_is_a_user_error_naming_the_file(tmp_path):
    p = tmp_path / "garbage.yaml"
    p.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(UserError, match=r"garbage\.yaml: not a text file"):
        spaces.load(p)


def test_space_file_over_the_size_cap_is_refused_before_parsing(tmp_path):
    p = write(tmp_path, BASE + "#" * spaces.MAX_SPACE_BYTES)
    with pytest.raises(UserError, match="too large for a space file"):
        spaces.load(p)


BOMB = "".join(f"{a}: &{a} [{', '.join([f'*{b}'] * 9)}]\n" for b, a in zip("abcdefgh", "bcdefghi"))


def test_yaml_alias_bomb_is_refused_without_expanding_it(tmp_path):
    p = write(tmp_path, "family: cnn\na: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + BOMB)
    with pytest.raises(UserError, match="expands to .* values through its aliases"):
        spaces.load(p)


def test_alias_bomb_in_a_set_value_is_refused():
    with pytest.raises(UserError, match="--set fixed.x: the document expands"):
        spaces.apply_overrides({}, ["fixed.x=[&a [1,1,1,1,1,1,1,1,1,1], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], "
                                    "&c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], "
                                    "[*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]]"], "s.yaml")


def test_a_few_ordinary_aliases_still_load(tmp_path):
    exp = spaces.load(write(tmp_path, BASE + "fixed: &f {dropout: 0.1}\n".replace("fixed", "fixed")))
    assert exp.constants["dropout"] == 0.1
    raw = spaces.read_yaml(write(tmp_path, "base: &b {lr: 0.1}\nother: *b\n", "a.yaml"))
    assert raw["other"] == {"lr": 0.1}


def test_recursive_and_deeply_nested_documents_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="recursive"):
        spaces.load(write(tmp_path, "family: cnn\nfixed: &a {x: *a}\n"))
    with pytest.raises(UserError, match="nested too deeply"):
        spaces.load(write(tmp_path, "family: cnn\nfixed: " + "[" * 5000 + "]" * 5000 + "\n"))


@pytest.mark.parametrize("override, fragment", [
    (["max_failures=abc"], "max_failures must be a whole number"),
    (["max_failures=-2"], "max_failures must be a whole number"),
    (["max_failures=1.5"], "max_failures"),
    (["storage=[1, 2]"], "storage must be a folder or a URI"),
    (["metric={val_loss: 1}"], "metric"),
    (["mode={max: 1}"], "mode"),
    (["fixed=[1, 2]"], "fixed must be a mapping"),
    (["space=3"], "space must be a mapping"),
    (["space={1: 2}"], "parameter names are words"),
    (["resources=[1]"], "resources must be auto or a mapping"),
    (["search=5"], "search must be a mapping"),
    (["dataset.split=[0.2]"], "dataset.split must be a mapping"),
    (["space.lr={uniform: [.nan, 0.1]}"], "bounds must be finite"),
    (["space.lr={loguniform: [1.0e-4, .inf]}"], "bounds must be finite"),
    (["space.blocks={int: [1, 1.0e+300]}"], "within +-2**53"),
    (["fixed.lr=.nan"], "lr is nan"),
    (["space.dropout={choice: [0.1, .inf]}"], "dropout is inf"),
    (["scheduler.reduction_factor=.inf"], "scheduler.reduction_factor: must be a finite number"),
    (["search.seed=-1"], "search.seed must be a whole number from 0"),
    (["search.seed=4294967296"], "search.seed"),
    (["dataset.split.seed=-3"], "dataset.split.seed"),
    (["dataset.image_size=100000"], "from 4 to 2048 pixels"),
    (["dataset.limit=0"], "dataset.limit"),
    (["fixed.lr=2024-13-45"], "--set fixed.lr: a value cannot be read"),
    (["fixed.lr=" + "9" * 5000], "too many digits"),
])
def test_wrong_type_or_range_of_a_top_level_key_is_a_user_error(tmp_path, override, fragment):
    with pytest.raises(UserError) as err:
        spaces.load(write(tmp_path, BASE), override)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_max_failures_minus_one_means_retry_forever_and_is_accepted(tmp_path):
    assert spaces.load(write(tmp_path, BASE), ["max_failures=-1"]).max_failures == -1


def test_suite_listing_a_suite_is_refused_naming_it(tmp_path):
    write(tmp_path, BASE, "a.yaml")
    write(tmp_path, "suite: [a.yaml]\n", "inner.yaml")
    with pytest.raises(UserError, match="suite member 'inner.yaml' is itself a suite"):
        spaces.load(write(tmp_path, "suite: [a.yaml, inner.yaml]\n", "outer.yaml"))


@pytest.mark.parametrize("text, fragment", [
    ("suite: a.yaml\n", "suite must be a non-empty list"),
    ("suite: [[a.yaml]]\n", "is not a file name"),
    ("suite: [3]\n", "is not a file name"),
    ("suite: [a.yaml]\nensemble: a\n", "ensemble must be a list"),
])
def test_suite_keys_are_type_checked(tmp_path, text, fragment):
    write(tmp_path, BASE, "a.yaml")
    with pytest.raises(UserError, match=fragment):
        spaces.load(write(tmp_path, text, "suite.yaml"))


def _grammar_words() -> list[str]:
    """Every key and keyword the real grammar knows, so random documents often get past the first check."""
    import dataclasses

    from tuner.data import READERS
    from tuner.families import FAMILIES

    words = set(spaces.TOP_KEYS) | spaces.SUITE_KEYS | set(spaces.DISTRIBUTIONS) | set(FAMILIES) | set(spaces.METRICS)
    words |= {k for f in FAMILIES.values() for k in f.params} | set(READERS)
    words |= set(spaces.SCHEDULERS) | set(spaces.ALGORITHMS) | {"max", "min", "auto", "official"}
    for cls in (spaces.DatasetConfig, spaces.SplitConfig, spaces.AugmentConfig, spaces.SearchConfig,
                spaces.SchedulerConfig, spaces.ResourcesConfig):
        words |= {f.name for f in dataclasses.fields(cls)}
    return sorted(words)


def _dotted_keys() -> list[str]:
    import dataclasses

    from tuner.families import FAMILIES

    keys = sorted(spaces.TOP_KEYS) + ["suite", "ensemble"]
    for top, cls in (("dataset", spaces.DatasetConfig), ("dataset.split", spaces.SplitConfig),
                     ("dataset.augment", spaces.AugmentConfig), ("search", spaces.SearchConfig),
                     ("scheduler", spaces.SchedulerConfig), ("resources", spaces.ResourcesConfig)):
        keys += [f"{top}.{f.name}" for f in dataclasses.fields(cls)]
    params = sorted({k for f in FAMILIES.values() for k in f.params})
    return keys + [f"fixed.{p}" for p in params] + [f"space.{p}" for p in params]


def _run_validate(argv: list[str]) -> tuple[int, str]:
    import contextlib
    import io

    from tuner.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["validate", *argv])
    return code, err.getvalue()


def _assert_0_or_one_error_line(code: int, err: str) -> None:
    assert code in (0, 2), err
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), err


def _strategies():
    from hypothesis import strategies as st

    words = _grammar_words()
    keys = st.sampled_from(words) | st.text(max_size=8)
    scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
               | st.sampled_from(words))
    values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(keys, c, max_size=4),
                          max_leaves=16)
    # mostly mappings shaped like a space file, sometimes anything at all
    docs = st.fixed_dictionaries({"family": st.sampled_from(words) | values},
                                 optional={k: values for k in sorted(spaces.TOP_KEYS | spaces.SUITE_KEYS)
                                           if k != "family"}) | values
    return st, values, docs


def test_fuzz_random_space_files_exit_0_or_2_never_a_traceback(tmp_path_factory):
    import yaml
    from hypothesis import given, settings

    st, _, docs = _strategies()
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "member.yaml").write_text(BASE)

    @settings(max_examples=200, deadline=None)
    @given(doc=docs | st.text(max_size=200) | st.binary(max_size=200))
    def check(doc):
        p = folder / "space.yaml"
        if isinstance(doc, bytes):
            p.write_bytes(doc)
        else:
            p.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
        _assert_0_or_one_error_line(*_run_validate(["--space", str(p)]))

    check()


@pytest.mark.slow  # hundreds of validations: tens of seconds, though no Ray
def test_fuzz_random_set_overrides_exit_0_or_2_never_a_traceback(tmp_path_factory):
    import yaml
    from hypothesis import given, settings

    st, values, _ = _strategies()
    p = tmp_path_factory.mktemp("fuzz") / "space.yaml"
    p.write_text(BASE)
    flow = values.map(lambda v: yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix("..."))
    override = (st.tuples(st.sampled_from(_dotted_keys()) | st.text(max_size=10), flow | st.text(max_size=30))
                .map(lambda kv: f"{kv[0]}={kv[1]}")) | st.text(max_size=30)

    @settings(max_examples=200, deadline=None)
    @given(sets=st.lists(override, min_size=1, max_size=3))
    def check(sets):
        argv = ["--space", str(p)]
        for s in sets:
            argv += ["--set", s]
        _assert_0_or_one_error_line(*_run_validate(argv))

    check()


# --------------------------------------------------------------------------- search power (issue 15)
COND = """
name: c
dataset: {name: digits}
family: features
scheduler: {name: fifo, max_epochs: 1}
fixed: {backbone: pixels}
space:
  classifier:
    choice:
      logreg: {C: {loguniform: [1.0e-3, 1.0e+2]}}
      svm: {C: {loguniform: [1.0e-2, 1.0e+3]}, kernel: {choice: [rbf, linear]}}
      random_forest: {n_estimators: {int: [50, 500]}, max_depth: {int: [2, 32]}}
"""


def test_conditional_choice_parses_to_a_tree_and_prints_back(tmp_path):
    exp = spaces.load(write(tmp_path, COND))
    node = exp.searched["classifier"]
    assert isinstance(node, spaces.Conditional)
    assert node.args == ("logreg", "svm", "random_forest")
    assert exp.param_names == ["classifier", "C", "kernel", "n_estimators", "max_depth"]
    again = spaces.parse_experiment(__import__("yaml").safe_load(spaces.resolved_yaml(exp)))
    assert again.searched["classifier"] == node


def test_a_conditional_grid_expands_each_option_with_its_own_subspace(tmp_path):
    exp = spaces.load(write(tmp_path, COND), ["search.algorithm=grid", "search.grid_points=2"])
    configs = spaces.grid_configs(exp.searched, 2)
    assert len(configs) == 2 + 2 * 2 + 2 * 2
    assert {"classifier": "logreg", "C": 0.001} in configs
    assert all("kernel" not in c for c in configs if c["classifier"] != "svm")


@pytest.mark.parametrize("override,key", [
    (["space.classifier.choice.svm.kernel={choice: [rbf, nope]}"], "space.classifier.choice.svm"),
    (["space.classifier.choice.svm.C={loguniform: [0, 1]}"], "space.classifier.choice.svm.C"),
    (["space.C=1.0"], "space.classifier.choice.logreg.C"),
    (["space.classifier.choice.svm=3"], "space.classifier.choice.svm"),
    (["metric=[val_accuracy, latency_ms]", "mode=[max]"], "mode"),
    (["metric=[val_accuracy, speed]", "mode=[max, min]"], "metric[1]"),
    (["constraints={latency_ms: {below: 3}}"], "constraints.latency_ms"),
    (["constraints={nonsense: {max: 3}}"], "constraints.nonsense"),
    (["search.sampler=annealing"], "search.sampler"),
    (["search.sampler=nsga2"], "search.sampler nsga2"),
    (["search.sampler=gp"], "search.sampler gp"),
    (["search.algorithm=random", "search.sampler=gp"], "search.sampler"),
    (["search.time_budget=10 minutes"], "search.time_budget"),
    (["search.time_budget=0"], "search.time_budget"),
    (["search.warm_start=[{nope: 1}]"], "search.warm_start[0].nope"),
    (["search.warm_start=/no/such/folder"], "search.warm_start"),
    (["metric=[val_accuracy, num_params]", "mode=[max, min]", "scheduler.name=median"], "scheduler.name"),
    (["scheduler.name=pbt"], "scheduler pbt"),
])
def test_bad_search_power_keys_are_user_errors_naming_the_key(tmp_path, override, key):
    with pytest.raises(UserError) as e:
        spaces.load(write(tmp_path, COND), override)
    assert "s.yaml" in str(e.value) and key in str(e.value)


def test_cmaes_on_a_categorical_only_space_is_rejected(tmp_path):
    text = BASE.replace("  lr: {loguniform: [1.0e-4, 1.0e-1]}\n", "").replace(
        "  dropout: {uniform: [0.0, 0.5]}\n  blocks: {int: [1, 3]}\n  channels: {logint: [8, 64]}\n", "")
    with pytest.raises(UserError, match="cmaes"):
        spaces.load(write(tmp_path, text), ["search.sampler=cmaes"])
    spaces.load(write(tmp_path, BASE), ["search.sampler=cmaes"])  # with numbers it is fine


@pytest.mark.parametrize("text,seconds", [(90, 90.0), ("30s", 30.0), ("10m", 600.0), ("2h", 7200.0), ("1.5m", 90.0)])
def test_time_budget_takes_seconds_or_a_duration_and_lifts_num_samples(tmp_path, text, seconds):
    exp = spaces.load(write(tmp_path, BASE.replace("num_samples: 4", "seed: 0")), [f"search.time_budget={text}"])
    assert exp.search.time_budget == seconds and exp.num_samples == -1


def test_multi_objective_with_constraints_parses(tmp_path):
    exp = spaces.load(write(tmp_path, COND), ["metric=[val_accuracy, latency_ms]", "mode=[max, min]",
                                              "constraints={num_params: {max: 5.0e+6}, latency_ms: {max: 10}}"])
    assert exp.multi and exp.metrics == ["val_accuracy", "latency_ms"] and exp.modes == ["max", "min"]
    assert exp.constraints == {"num_params": {"max": 5.0e6}, "latency_ms": {"max": 10.0}}



# --------------------------------------------------------------------------- warm-start values inside the space
@pytest.mark.parametrize("text, point, key, allowed", [
    (BASE, "{lr: 0.5}", "search.warm_start[0].lr", "space.lr is loguniform [0.0001, 0.1]"),
    (BASE, "{batch_size: 64}", "search.warm_start[0].batch_size", "space.batch_size is one of 16, 32"),
    (BASE, "{blocks: 2.5}", "search.warm_start[0].blocks", "space.blocks is int [1, 3] (whole numbers)"),
    (BASE, "{dropout: high}", "search.warm_start[0].dropout", "space.dropout is uniform [0.0, 0.5]"),
    (COND, "{classifier: knn}", "search.warm_start[0].classifier",
     "space.classifier is one of logreg, svm, random_forest"),
    (COND, "{classifier: logreg, C: 500.0}", "search.warm_start[0].C",
     "space.classifier.logreg.C is loguniform [0.001, 100.0]"),
    (COND, "{classifier: logreg, kernel: rbf}", "search.warm_start[0].kernel",
     "belongs to classifier: svm, which this config does not choose"),
    (COND, "{n_estimators: 100}", "search.warm_start[0].n_estimators", "classifier: random_forest"),
])
def test_warm_start_values_outside_the_space_are_user_errors_naming_the_key_and_range(tmp_path, text, point, key,
                                                                                       allowed):
    with pytest.raises(UserError) as e:
        spaces.load(write(tmp_path, text), [f"search.warm_start=[{{lr: 1.0e-3}}, {point}]".replace(
            "{lr: 1.0e-3}", "{lr: 1.0e-3}" if text is BASE else "{classifier: svm}")])
    msg = str(e.value)  # the mistake is the --set's, in the space of that file
    assert msg.startswith("--set search.warm_start=[") and msg.endswith(f"(in {tmp_path / 's.yaml'})"), msg
    assert key.replace("[0]", "[1]") in msg and allowed in msg, msg


def test_warm_start_values_inside_the_space_validate(tmp_path):
    exp = spaces.load(write(tmp_path, COND), ["search.warm_start=[{classifier: svm, C: 500.0, kernel: linear}, "
                                              "{classifier: random_forest, n_estimators: 100}, {classifier: logreg}]"])
    assert len(exp.search.warm_start) == 3


def test_cli_validate_exits_2_on_a_warm_start_value_outside_the_space(tmp_path, capsys):
    from tuner.cli import main

    code = main(["validate", "--space", str(write(tmp_path, BASE)), "--set", "search.warm_start=[{lr: 0.5}]"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "search.warm_start[0].lr" in err and "[0.0001, 0.1]" in err


def test_a_name_written_as_a_number_is_called_a_number(tmp_path):
    import yaml as _yaml

    space = Path(__file__).resolve().parents[1] / "search_spaces" / "digits_cnn.yaml"
    raw = _yaml.safe_load(space.read_text())
    raw["name"] = 123
    f = tmp_path / "n.yaml"
    f.write_text(_yaml.safe_dump(raw))
    with pytest.raises(UserError, match=r"123 is a number, not a name"):
        spaces.load(f)


FIXED_IN_BRANCH = """
family: features
dataset: {name: digits}
fixed: {backbone: pixels, C: 7.0, classifier: svm}
space:
  kernel: {choice: [rbf]}
  classifier:
    choice:
      logreg: {C: {loguniform: [1.0e-3, 1.0e+2]}}
      svm: {C: {loguniform: [1.0e-2, 1.0e+3]}, degree: 3, gamma: {choice: [scale, auto]}}
"""


def test_fixed_wins_over_the_same_key_inside_a_branch_and_a_pinned_choice_keeps_its_option(tmp_path):
    # the docs say a key in fixed: wins over the same key in space:; inside a branch the branch's draw won
    import optuna

    from tuner.search.domains import DefineByRun
    from tuner.tables import trial_row

    exp = spaces.load(write(tmp_path, FIXED_IN_BRANCH))
    assert set(exp.searched) == {"kernel", "gamma"}  # classifier pinned to svm: its option's gamma is searched
    assert exp.constants["C"] == 7.0 and exp.constants["degree"] == 3
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    config = DefineByRun(exp.searched)(study.ask())
    assert "C" not in config and config["gamma"] in ("scale", "auto")
    row, _ = trial_row(exp, "t0", {**exp.constants, **config}, None, None)
    assert row["C"] == 7.0 and row["classifier"] == "svm"


def test_fixed_pins_a_key_inside_a_nested_branch_of_an_unpinned_choice(tmp_path):
    exp = spaces.load(write(tmp_path, FIXED_IN_BRANCH.replace(", classifier: svm", "")))
    cond = exp.searched["classifier"]
    assert [sorted(sub) for _, sub in cond.options] == [[], ["degree", "gamma"]]
    assert "C" not in exp.param_names and exp.constants["C"] == 7.0


@pytest.mark.parametrize("key, hint", [
    ("fuse", "(did you mean search.fuse?)"),
    ("max_epochs", "(did you mean scheduler.max_epochs?)"),
    ("image_size", "(did you mean dataset.image_size?)"),
    ("lr", "(mlp takes lr: put it under fixed: or space:)"),
])
def test_a_blocks_key_at_the_top_names_where_it_goes(key, hint):
    with pytest.raises(UserError, match=re.escape(f"unknown key '{key}' {hint}")):
        spaces.parse_experiment({"name": "x", "family": "mlp", key: 4})


def test_a_mistake_made_with_set_is_named_by_its_set_and_one_in_the_file_by_the_file(tmp_path):
    """The file does not hold a key mistyped on the command line: the error names the --set that brought it."""
    path = write(tmp_path, BASE)
    with pytest.raises(UserError) as e:
        spaces.load(path, ["search.num_samples=4", "scheduler.max_epoch=5"])
    assert str(e.value).startswith("--set scheduler.max_epoch=5: unknown key scheduler.max_epoch; known keys: ")
    assert str(e.value).endswith(f"(in {path})")
    bad = write(tmp_path, BASE + "\nresources: {cpu: 1, gpus: 0}\n")
    with pytest.raises(UserError) as e:
        spaces.load(bad, ["search.num_samples=4"])
    assert str(e.value).startswith(f"{bad}: unknown key resources.gpus"), str(e.value)
