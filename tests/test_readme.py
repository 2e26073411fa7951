"""The README's CLI and API references are checked against the code, so they stay true."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from tessera_gpu.cli.main import cli

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_opens_with_the_two_commands() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    assert "tessera serve --demo" in blocks[0]
    assert blocks[1].strip() == "./scripts/test"


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_command_and_option_is_documented(name: str) -> None:
    command = cli.commands[name]
    row = next(
        (line for line in README.splitlines() if line.startswith(f"| `tessera {name}")), None
    )
    assert row is not None, f"README's CLI reference has no row for `tessera {name}`"
    for param in command.params:
        if isinstance(param, click.Option) and param.name != "help":
            assert any(flag in row for flag in param.opts), f"{name}: {param.opts} missing"


def _routes() -> list[tuple[str, str]]:
    import tempfile

    from tessera_app.main import create_app

    from tessera_gpu.settings import Settings

    app = create_app(Settings(data_dir=Path(tempfile.mkdtemp())))
    out = []
    for route in app.routes:
        path = re.sub(r"\{(\w+):[^}]+\}", r"{\1}", route.path).replace("{tile}", "{y}.png")
        if not path.startswith("/api/") or path.startswith("/api/schema"):
            continue
        for method in sorted(getattr(route, "methods", ())):
            if method not in ("HEAD", "OPTIONS"):
                out.append((method, path))
    return out


def test_every_api_route_is_documented() -> None:
    missing = [f"{m} {p}" for m, p in _routes() if f"`{m} {p}`" not in README]
    assert not missing, f"README's API reference lacks: {missing}"


def test_the_readmes_python_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's code blocks that make a file and use the library, run as written."""
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    make = next(b for b in blocks if "write_dataset(" in b)
    use = next(b for b in blocks if "Tessera(" in b)
    monkeypatch.chdir(tmp_path)
    small = make.replace("n = 1000", "n = 200")  # the same code, fewer episodes to encode
    assert small != make
    exec(compile(small, "README: making a file", "exec"), {})
    printed: list[str] = []
    namespace = {"print": lambda *a: printed.append(" ".join(map(str, a)))}
    exec(
        compile(use.replace("/tmp/tessera", str(tmp_path / "data")), "README: library", "exec"),
        namespace,
    )
    dataset_id, first_ids = printed[0].split(" ", 1)
    assert len(dataset_id) == 16
    assert first_ids.startswith("['ep_")


def test_the_cli_examples_use_ids_the_write_dataset_example_makes() -> None:
    """A newcomer writes the README's file, then runs its commands on it: the episode ids the
    commands name must exist there (``tessera similar ... ep_000123`` did not: ep_00123)."""
    make = next(b for b in re.findall(r"```python\n(.*?)```", README, flags=re.S)
                if "write_dataset(" in b)  # fmt: skip
    n = int(re.search(r"^n = (\d+)$", make, flags=re.M).group(1))  # type: ignore[union-attr]
    pattern = re.search(r"episode_ids=\[f\"(.*?)\" for i in range\(n\)\]", make).group(1)  # type: ignore[union-attr]
    made = {pattern.format(i=i) for i in range(n)}  # the example's own f-string
    named = re.findall(r"^tessera similar my_embeddings\.h5 (\S+)", README, flags=re.M)
    assert named, "the README has no `tessera similar` example"
    assert set(named) <= made, f"{named} are not ids of the write_dataset example"
