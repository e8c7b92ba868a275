"""Every rule's conda environment (envs/*.yaml) has the packages its command imports, resolved without a
network: the rule's `python -m <module>` is followed through the project's own imports (ast), and each
third-party top-level module is mapped to its distribution by this interpreter's installed metadata.
The command's own module counts every import, also those inside functions (its main runs them); a module it
imports counts those run at import time (a library module's lazy imports serve paths the rule may not take,
as pipeline.flow's torch for GMA, which the affinity rule never calls)."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROJECT = {"pipeline", "model"}
# Entry modules that start another module in a new process (not an import): model.launch runs torchrun.
STARTS = {"model.launch": ["model.train"]}


def rule_blocks() -> dict[str, str]:
    """Rule name -> its text, over workflow/rules/*.smk (a block runs to the next `rule` line)."""
    blocks = {}
    for smk in sorted((REPO / "workflow/rules").glob("*.smk")):
        parts = re.split(r"^\s*rule (\w+):", smk.read_text(), flags=re.M)
        blocks.update(zip(parts[1::2], parts[2::2]))
    return blocks


def module_file(name: str) -> Path:
    """The source file of project module `name` (a package's __init__.py)."""
    path = REPO.joinpath(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def import_time_nodes(tree: ast.Module) -> list[ast.AST]:
    """The nodes of `tree` that run when the module is imported: everything outside function bodies."""
    nodes, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        nodes.append(node)
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))
    return nodes


def imported_modules(name: str, seen: set[str] | None = None, entry: bool = True) -> set[str]:
    """Third-party top-level modules that project module `name` imports, directly or through project modules
    (every import of the entry module, the import-time ones of the modules it reaches)."""
    seen = set() if seen is None else seen
    if name in seen:
        return set()
    seen.add(name)
    package = name if module_file(name).name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(module_file(name).read_text())
    found: set[str] = set()
    for node in ast.walk(tree) if entry else import_time_nodes(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            top = target.split(".")[0]
            if top in PROJECT:
                if module_file(target).exists():
                    found |= imported_modules(target, seen, entry=False)
            elif top and top not in sys.stdlib_module_names and top != "__future__":
                found.add(top)
    return found


@functools.cache
def distributions() -> dict[str, list[str]]:
    """Top-level module -> distributions installed here (read once: the metadata walk is slow)."""
    return importlib.metadata.packages_distributions()


def normalise(dist: str) -> str:
    """A distribution name in PEP 503 form."""
    return re.sub(r"[-_.]+", "-", dist).lower()


def env_packages(env_file: Path) -> set[str]:
    """Distribution names an envs/*.yaml installs (conda entries and its pip list), normalised."""
    names = set()
    for entry in yaml.safe_load(env_file.read_text())["dependencies"]:
        for spec in entry["pip"] if isinstance(entry, dict) else [entry]:
            names.add(normalise(re.split(r"[=<>!\[ ]", spec)[0]))
    return names


RULES = {name: block for name, block in rule_blocks().items() if "conda:" in block}


def test_every_rule_with_a_command_has_an_env() -> None:
    """Each rule that runs `python -m` names a conda env (the plain `all`-style targets run nothing)."""
    missing = [name for name, block in rule_blocks().items() if "python -m" in block and "conda:" not in block]
    assert not missing, missing
    assert len(RULES) >= 10, sorted(RULES)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_rule_env_has_what_its_modules_import(rule: str) -> None:
    """The env lists a distribution for every third-party module the rule's modules import."""
    block = RULES[rule]
    env = re.search(r'conda:\s*"([^"]+)"', block).group(1)
    have = env_packages((REPO / "workflow/rules" / env).resolve())
    dists = distributions()
    commands = re.findall(r"python -m ([\w.]+)", block)
    assert commands, f"rule {rule}: no `python -m` command"
    commands += [started for m in commands for started in STARTS.get(m, [])]
    modules = set().union(*(imported_modules(m) for m in commands))
    lacking = {m: dists.get(m, [m]) for m in modules if not {normalise(d) for d in dists.get(m, [m])} & have}
    assert not lacking, f"rule {rule} ({env}) imports {sorted(lacking)} but the env lacks {lacking}"


def test_import_resolution_sees_through_project_modules() -> None:
    """pipeline.flow imports pycocotools only through pipeline.ytvis: the walk must find it."""
    direct = {n.names[0].name.split(".")[0] for n in ast.walk(ast.parse(module_file("pipeline.flow").read_text()))
              if isinstance(n, ast.Import)}
    assert "pycocotools" not in direct
    assert "pycocotools" in imported_modules("pipeline.flow")


def test_started_modules_are_what_the_launchers_start() -> None:
    """STARTS names the modules the launchers really start (`"-m", "<module>"` in their source)."""
    for launcher, started in STARTS.items():
        source = module_file(launcher).read_text()
        assert all(f'"-m", "{module}"' in source for module in started), (launcher, started)
