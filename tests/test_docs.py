"""The documentation in docs/ says what the code does: the families reference is generated from the
`Param` definitions, and the hand-written pages name every key, file and search space there is."""
from __future__ import annotations

from pathlib import Path

from tuner import docs
from tuner.families import shipped_families

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_families_doc_is_generated_from_the_current_params():
    checked_in = (DOCS / "families.md").read_text()
    assert checked_in == docs.render(), "docs/families.md is out of date: run `python -m tuner.docs`"


def test_families_doc_names_every_parameter_of_every_family():
    text = docs.render()
    for name, family in shipped_families().items():
        assert f"## {name}\n" in text
        for param in family.params:
            assert f"| `{param}` |" in text, f"{name}.{param} missing from docs/families.md"


def test_common_params_are_those_every_trained_family_shares():
    common = docs.common_params()
    assert {"optimizer", "lr", "batch_size", "seed"} <= set(common)
    for family in shipped_families().values():
        if "optimizer" in family.params:
            assert all(family.params[k] == p for k, p in common.items())


def test_main_writes_the_rendered_text(tmp_path):
    out = tmp_path / "families.md"
    assert docs.main([str(out)]) == 0
    assert out.read_text() == docs.render()


def test_space_file_doc_names_every_key_of_the_grammar():
    import dataclasses

    from tuner import spaces

    text = (DOCS / "space-file.md").read_text()
    keys = set(spaces.TOP_KEYS) | set(spaces.SUITE_KEYS)
    for block in (spaces.DatasetConfig, spaces.SplitConfig, spaces.AugmentConfig, spaces.SearchConfig,
                  spaces.SchedulerConfig, spaces.ResourcesConfig):
        keys |= {f.name for f in dataclasses.fields(block)}
    missing = sorted(k for k in keys if f"| `{k}` |" not in text)
    assert not missing, f"docs/space-file.md has no table row for {missing}"
    for kind in spaces.DISTRIBUTIONS:
        assert f"{{{kind}: [" in text, f"docs/space-file.md does not show the {kind} distribution"


def test_results_doc_lists_the_columns_the_code_writes():
    from tuner.tables import EPOCH_COLUMNS
    from tuner.report.compare import COMPARISON_COLUMNS, METRIC_COLUMNS

    text = (DOCS / "results.md").read_text()
    for col in EPOCH_COLUMNS + COMPARISON_COLUMNS:
        assert f"`{col}`" in text, f"docs/results.md does not name the column {col}"
    # every metrics.json key is explained in a row of the metrics table, not only listed
    section = text.split("## metrics.json", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    unexplained = [c for c in METRIC_COLUMNS if not any(f"`{c}`" in r for r in rows)]
    assert not unexplained, f"docs/results.md: no row in the metrics.json table for {unexplained}"


def test_every_search_space_file_is_linked_from_the_seeds_doc():
    text = (DOCS / "seeds.md").read_text()
    unlinked = [p.name for p in sorted((ROOT / "search_spaces").glob("*.yaml"))
                if f"](../search_spaces/{p.name})" not in text]
    assert not unlinked, f"docs/seeds.md links no report experiment or demo to {unlinked}"


def test_relative_links_in_readme_and_docs_resolve():
    import re

    pages = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, f"links to files that do not exist: {broken}"


def test_readme_and_docs_point_nowhere_outside_the_repository():
    # shared/ (the contract, the seed reports) is not in the repository a user clones
    for page in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        assert "shared/" not in page.read_text(), f"{page.relative_to(ROOT)} points into shared/"
