"""The shape of the project: layer boundaries, file sizes, no machine paths, docs that point at real tests."""

import ast
import re

import pytest
from conftest import REPO

PACKAGE = REPO / "seg_gan"


def seg_gan_imports(path) -> set[str]:
    """The seg_gan modules a file imports (at any depth: lazy imports inside functions count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "seg_gan":
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "seg_gan")
    return found


# layer -> what it may import from seg_gan: the data layer stands on the ground; the maths are pure
GROUND = {
    "data": ("seg_gan.data", "seg_gan.errors"),
    "models": ("seg_gan.models", "seg_gan.errors"),
    "losses.py": ("seg_gan.errors",),
    "metrics.py": ("seg_gan.errors",),
    "inference.py": ("seg_gan.errors",),
    "errors.py": (),
}


@pytest.mark.parametrize("layer", sorted(GROUND))
def test_lower_layers_import_nothing_above_them(layer):
    files = sorted((PACKAGE / layer).rglob("*.py")) if (PACKAGE / layer).is_dir() else [PACKAGE / layer]
    allowed = GROUND[layer]
    for path in files:
        above = {name for name in seg_gan_imports(path) if not name.startswith(allowed)}
        assert not above, f"{path.relative_to(REPO)} imports {sorted(above)}; {layer} may use only {allowed}"


def test_no_file_in_the_package_is_longer_than_350_lines():
    long = {str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 350}
    assert not long, long


SHIPPED = ["seg_gan", "configs", "notebooks", "README.md", "Makefile", "pyproject.toml"]


def test_no_development_machine_paths_in_shipped_files():
    # dataset roots are required arguments (???) or given on the command line; nothing points at this machine
    pattern = re.compile(r"\.\./shared|/work/|/tmp/pytest|/root/")
    for entry in SHIPPED:
        path = REPO / entry
        for file in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
            if file.suffix in (".py", ".yaml", ".md", ".ipynb", ".toml", ".txt") or file.name == "Makefile":
                assert not pattern.search(file.read_text()), f"{file.relative_to(REPO)} names a machine path"


def test_bad_input_table_points_at_real_tests():
    table = (REPO / "tests" / "README.md").read_text().split("## Bad input", 1)[1].split("\n## ", 1)[0]
    names = re.findall(r"`(test_\w+)`", table)
    assert len(names) >= 40
    source = "".join(p.read_text() for p in (REPO / "tests").glob("test_*.py"))
    for name in names:
        assert f"def {name}(" in source, name
