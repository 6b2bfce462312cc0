"""The docs' Reference section: made from the code, complete, and the site builds with it.

docs/reference_gen.py renders each part; these tests hold every setting, command, metric,
event type and error to appearing there, and build the whole site with `mkdocs build --strict`
(skipped only where mkdocs is not installed).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import click
import pytest

from docs import reference_gen
from orchestrator import errors
from orchestrator.cli.exporter import FAMILIES
from orchestrator.cli.main import main
from orchestrator.config import Settings
from orchestrator.events.catalogue import CATALOGUE
from tests.support import REPO_ROOT

PAGES = REPO_ROOT / "docs" / "reference"


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return {name: reference_gen.render(name) for name in reference_gen.GENERATORS}


def command_paths(command: click.Command, path: str) -> list[str]:
    paths = [path]
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            paths += command_paths(sub, f"{path} {name}")
    return paths


@pytest.mark.parametrize("name", list(Settings.model_fields))
def test_every_setting_is_in_the_settings_reference(rendered, name):
    row = f"| `ORCH_{name.upper()}` |"
    assert row in rendered["settings"]
    line = next(line for line in rendered["settings"].splitlines() if line.startswith(row))
    assert line.rstrip(" |").endswith(reference_gen.cell(Settings.model_fields[name].description))


def test_the_settings_sections_follow_the_model_and_cover_it(rendered):
    rows = re.findall(r"^\| `ORCH_([A-Z0-9_]+)` \|", rendered["settings"], re.M)
    assert [r.lower() for r in rows] == list(Settings.model_fields)


@pytest.mark.parametrize(
    ("annotation", "metadata", "rule"),
    [
        (Settings.model_fields["max_deliveries"].annotation, [], "integer"),
        (bool, [], "`true` or `false`"),
        (
            Settings.model_fields["max_deliveries"].annotation,
            Settings.model_fields["max_deliveries"].metadata,
            "integer, 1 to 100",
        ),
        (
            Settings.model_fields["backup_rpo_s"].annotation,
            Settings.model_fields["backup_rpo_s"].metadata,
            "number, more than 0 (or unset)",
        ),
        (
            Settings.model_fields["fair_share"].annotation,
            [],
            "one of `client`, `off`",
        ),
    ],
)
def test_a_settings_value_rule_comes_from_its_type_and_bounds(annotation, metadata, rule):
    assert reference_gen.value_rule(annotation, metadata) == rule


@pytest.mark.parametrize("path", command_paths(main, "orchestrator"))
def test_every_command_is_in_the_cli_reference(rendered, path):
    assert f"\n## {path}\n" in f"\n{rendered['cli']}"
    assert f"Usage: {path} " in rendered["cli"]


def test_every_metric_is_in_the_metrics_reference(rendered):
    worker = [name for name, *_ in reference_gen.worker_metrics()]
    assert len(worker) == 7  # WorkerMetrics' families, each an attribute
    for name in [*FAMILIES, *worker]:
        assert f"`{name}" in rendered["metrics"], name


@pytest.mark.parametrize("spec", CATALOGUE, ids=lambda s: s.type)
def test_every_event_type_is_in_the_events_reference(rendered, spec):
    assert f"| `{spec.type}` | {reference_gen.cell(spec.severity)} |" in rendered["events"]


@pytest.mark.parametrize("cls", reference_gen.error_classes(), ids=lambda c: c.__name__)
def test_every_error_is_in_the_errors_reference(rendered, cls):
    base = cls.__bases__[0].__name__
    assert f"## {cls.__name__}\n" in rendered["errors"]
    assert f"a subclass of `{base}`" in rendered["errors"]


def test_the_errors_reference_covers_the_whole_tree():
    defined = {
        n
        for n, obj in vars(errors).items()
        if isinstance(obj, type) and issubclass(obj, BaseException)
    }
    assert {c.__name__ for c in reference_gen.error_classes()} == defined


@pytest.mark.parametrize("name", list(reference_gen.GENERATORS))
def test_each_reference_page_keeps_its_title_intro_and_marker(name):
    page = (PAGES / f"{name}.md").read_text(encoding="utf-8")
    title, _, rest = page.partition("\n\n")
    assert title.startswith("# ")
    assert f"<!-- generated: {name} -->" in rest
    filled = reference_gen.fill(page)
    assert "<!-- generated" not in filled
    assert filled.startswith(title)


def test_an_unknown_marker_is_an_error():
    with pytest.raises(ValueError, match="no generated reference 'setings'"):
        reference_gen.fill("<!-- generated: setings -->")


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed")
def test_the_site_builds_strictly(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr
    settings = (site / "reference" / "settings" / "index.html").read_text(encoding="utf-8")
    assert "ORCH_REDIS_URL" in settings and "generated:" not in settings
    assert not list(site.rglob("*.py")), "the hook and the generator are not pages"
