"""Search-space files: YAML + `--set` overrides -> a validated, typed `Experiment` (or `Suite`).

Everything a user can get wrong is checked here, before Ray starts, so a typo costs a second and
not a cluster allocation. Every error is a `UserError` naming the file and the dotted key.

    distributions.py  the `space:` grammar: typed Distribution / Conditional, the grid of a tree
    names.py          experiment names and paths a file gives
    yamlfile.py       the hardened YAML loader and `--set`
    blocks.py         the config blocks (dataset, search, scheduler, resources), each parsing and checking itself
    experiment.py     Experiment and Suite
    rules.py          rules across keys: objectives, constraints, the conditional tree, sampler/scheduler flags
    warm.py           search.warm_start
    suites.py         suite files
    parse.py          load / parse_experiment: the above, in order
    dump.py           the space as run (space.yaml) and its --smoke version

`import tuner.spaces` loads neither numpy, torch, Ray nor Optuna: data set and family names are read from
their registries when a file is parsed, and the sampler and scheduler registries import nothing heavy.
"""
from __future__ import annotations

import dataclasses  # noqa: F401  (tests read spaces.dataclasses)

from tuner.search.samplers import DEFAULT_SAMPLER, SAMPLERS, sampler_names  # noqa: F401
from tuner.search.schedulers import SCHEDULERS, scheduler_names  # noqa: F401
from tuner.spaces.blocks import (ALGORITHMS, DURATION, DURATION_UNITS, FRACTION, NORMALIZATIONS, SEED,  # noqa: F401
                                 AugmentConfig, DatasetConfig, ResourcesConfig, SchedulerConfig, SearchConfig,
                                 SplitConfig, build_block, check_type, parse_duration)
from tuner.spaces.distributions import (DISTRIBUTIONS, INT_LIMIT, KINDS, Conditional, Distribution, Kind,  # noqa: F401
                                        Node, finite, grid_configs, is_searched, node_yaml, parse_distribution,
                                        same_value)
from tuner.spaces.dump import resolved_yaml, smoke  # noqa: F401
from tuner.spaces.experiment import Experiment, Suite, pin  # noqa: F401
from tuner.spaces.names import NAME_MAX, NAME_PATTERN, check_name, check_path_text, shown  # noqa: F401
from tuner.spaces.parse import MAX_FAILURES, STORAGE, TOP_KEYS, load, parse_experiment  # noqa: F401
from tuner.spaces.rules import CONSTRAINT_SIDES, METRICS, OBJECTIVES, check_search_power  # noqa: F401
from tuner.spaces.suites import SUITE_KEYS, load_suite  # noqa: F401
from tuner.spaces.warm import check_warm_start, point_problem  # noqa: F401
from tuner.spaces.yamlfile import (EXPONENT_FLOAT, MAX_SPACE_BYTES, MAX_YAML_NODES, SpaceDumper,  # noqa: F401
                                   SpaceLoader, apply_overrides, read_yaml, safe_yaml, yaml_problem)
