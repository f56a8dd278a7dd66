"""The package's layers: each imports only those below it, and the domain nothing but the
standard library and its small pure dependencies; no source file is over 500 lines."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "streams"

# Lower first; a module may import its own layer and any below it.
LAYERS = {
    "domain": 0,
    "pipeline": 1,
    "adapters": 1,
    "runtime": 2,
    "serving": 3,
    "service": 3,
    "tools": 4,
    "sim": 4,
    "testing": 4,
}
DOMAIN_THIRD_PARTY = {"ahocorasick"}  # the C Aho-Corasick of the bounce rules' prefilter


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")


def _layer(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0]


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def test_every_module_belongs_to_a_layer():
    assert {_layer(p) for p in _modules()} <= set(LAYERS)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_from_a_layer_above_it(path):
    rank = LAYERS[_layer(path)]
    above = sorted(
        name
        for name in _imports(path)
        if name.startswith("streams.") and LAYERS[name.split(".")[1]] > rank
    )
    assert above == []


@pytest.mark.parametrize(
    "path",
    [p for p in _modules() if _layer(p) == "domain"],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_the_domain_imports_only_itself_the_standard_library_and_pure_helpers(path):
    outside = sorted(
        name
        for name in _imports(path)
        if not name.startswith("streams.domain")
        and name.split(".")[0] not in sys.stdlib_module_names
        and name.split(".")[0] not in DOMAIN_THIRD_PARTY
        and name != "__future__"
    )
    assert outside == []


# The vendor adapters are pure conversions: the tools and the HTTP service do the I/O.
ADAPTER_FORBIDDEN = {"confluent_kafka", "aiokafka", "faust", "redis", "aiohttp", "socket"}


@pytest.mark.parametrize(
    "path",
    [p for p in _modules() if _layer(p) == "adapters"],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_the_adapters_do_no_io_of_their_own(path):
    imported = {name.split(".")[0] for name in _imports(path)}
    in_pipeline = {n for n in _imports(path) if n.startswith("streams.pipeline")}
    assert imported & ADAPTER_FORBIDDEN == set()
    assert in_pipeline == set()


def test_no_source_file_is_over_500_lines():
    sources = [*PACKAGE.rglob("*.py"), *(ROOT / "tests").rglob("*.py")]
    sources += (ROOT / "benchmarks").rglob("*.py")
    long = {
        str(p.relative_to(ROOT)): n for p in sources if (n := len(p.read_text().splitlines())) > 500
    }
    assert long == {}
