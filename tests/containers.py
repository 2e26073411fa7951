"""What a container's process would get, read from the docker files and from the README.

No docker engine runs in CI, so the container contract is checked without one. Each
Dockerfile's ARG, FROM, ENV, USER, ENTRYPOINT, CMD, EXPOSE, VOLUME and HEALTHCHECK, compose.yml's
environment, command, ports and volumes, and every docker command in the README's bash blocks
become a :class:`Container`: the argv and environment its process gets, its volumes and its
published ports. :func:`launch` maps the volumes and the port to temporary ones and starts it.
Nothing here goes through a shell: commands are split with shlex and run as argument lists.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile.*"))
COMPOSE = ROOT / "docker" / "compose.yml"
HEALTH_DEFAULTS = {"interval": "30s", "timeout": "30s", "start-period": "0s"}  # Docker's


@dataclass
class Image:
    dockerfile: Path
    base: str = ""
    args: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    user: str = "0"
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    expose: list[int] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)
    health_options: dict[str, str] = field(default_factory=dict)
    runs: list[str] = field(default_factory=list)

    def seconds(self, option: str) -> float:
        """A HEALTHCHECK duration option (``30s``, ``1m``) in seconds; Docker's default if unset."""
        raw = self.health_options.get(option) or HEALTH_DEFAULTS[option]
        value, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", raw).groups()
        return float(value) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]

    @property
    def retries(self) -> int:
        return int(self.health_options.get("retries", "3"))


@dataclass
class Container:
    """One container as its process sees it (before any path or port is mapped)."""

    label: str
    image: Image
    argv: list[str]
    env: dict[str, str]
    volumes: dict[str, str]  # container path -> named volume or host path
    ports: list[tuple[str, int, int]]  # (host address, host port, container port)

    @property
    def serves(self) -> bool:
        return self.argv[:2] == ["tessera", "serve"]


# ---- Dockerfiles ---------------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """``(KEYWORD, rest)`` per instruction: continuations joined, comments dropped."""
    out, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, inside a continuation too
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        out.append((keyword.upper(), rest.strip()))
        pending = ""
    return out


def substitute(text: str, values: Mapping[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values[m.group(1) or m.group(2)], text)


def parse_dockerfile(path: Path) -> Image:
    image = Image(dockerfile=path)
    for keyword, rest in instructions(path.read_text()):
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            image.args[name] = default
        elif keyword == "FROM":
            image.base = substitute(rest, image.args)
        elif keyword == "ENV":
            for item in shlex.split(rest):
                name, sep, value = item.partition("=")
                assert sep, f"{path.name}: ENV {item!r} is not NAME=literal"
                assert "$" not in value, f"{path.name}: ENV {item!r} is not NAME=literal"
                image.env[name] = value
        elif keyword == "USER":
            image.user = rest
        elif keyword in ("ENTRYPOINT", "CMD"):
            assert rest.startswith("["), f"{path.name}: {keyword} must be exec (JSON) form"
            setattr(image, keyword.lower(), json.loads(rest))
        elif keyword == "EXPOSE":
            image.expose = [int(p.split("/")[0]) for p in rest.split()]
        elif keyword == "VOLUME":
            image.volumes = json.loads(rest) if rest.startswith("[") else rest.split()
        elif keyword == "HEALTHCHECK":
            options, _, command = rest.partition("CMD ")
            image.health_options = dict(o[2:].split("=", 1) for o in options.split())
            image.healthcheck = json.loads(command)
        elif keyword == "RUN":
            image.runs.append(rest)
    return image


def image_alone(image: Image) -> Container:
    """``docker run IMAGE``: the image's own ENTRYPOINT, CMD, ENV and volumes."""
    return Container(
        label=f"{image.dockerfile.name} alone",
        image=image,
        argv=image.entrypoint + image.cmd,
        env=dict(image.env),
        volumes={v: "(anonymous)" for v in image.volumes},
        ports=[],
    )


# ---- compose -------------------------------------------------------------------------------------


def env_file(path: Path) -> dict[str, str]:
    """A compose ``.env`` file: ``NAME=value`` lines; blank lines and ``#`` comments skipped."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"{path}: not NAME=value: {line!r}"
            out[name.strip()] = value.strip().strip("'\"")
    return out


def interpolate(text: str, values: Mapping[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``,
    ``${VAR?error}`` and ``$$``; a required variable that is missing fails as compose does."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name") or m.group("bare"), m.group("op") or "", m.group("arg")
        value = values.get(name)
        empty = value is None or (value == "" and op.startswith(":"))
        if op.endswith("?") and empty:
            raise AssertionError(f"compose: required variable {name} is missing a value: {arg}")
        if op.endswith("-") and empty:
            return arg or ""
        return value or ""

    pattern = r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$(?P<bare>\w+)"
    return re.sub(pattern, one, text)


def _interpolated(node: Any, values: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, values)
    if isinstance(node, list):
        return [_interpolated(n, values) for n in node]
    if isinstance(node, dict):
        return {k: _interpolated(v, values) for k, v in node.items()}
    return node


def compose_services(path: Path, values: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The services of a compose file, interpolated with ``values`` (the ``--env-file``)."""
    return _interpolated(yaml.safe_load(path.read_text()), values)["services"]


def compose_container(name: str, service: dict[str, Any], compose: Path, label: str) -> Container:
    build = service["build"]
    image = parse_dockerfile((compose.parent / build["context"] / build["dockerfile"]).resolve())
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    volumes = {v: "(anonymous)" for v in image.volumes}
    for spec in service.get("volumes", []):
        source, target = spec.split(":")[:2]
        volumes[target] = source
    ports = [_port(str(p)) for p in service.get("ports", [])]
    entrypoint = service.get("entrypoint", image.entrypoint)
    return Container(
        label=label,
        image=image,
        argv=list(entrypoint) + list(service.get("command", image.cmd)),
        env={**image.env, **{k: str(v) for k, v in environment.items()}},
        volumes=volumes,
        ports=ports,
    )


def _port(spec: str) -> tuple[str, int, int]:
    parts = spec.split(":")
    if len(parts) == 1:
        return ("0.0.0.0", int(parts[0]), int(parts[0]))
    if len(parts) == 2:
        return ("0.0.0.0", int(parts[0]), int(parts[1]))
    return (parts[0], int(parts[1]), int(parts[2]))


# ---- the README ----------------------------------------------------------------------------------


def readme_docker_commands(readme: str) -> list[list[str]]:
    """Each command (split at ``&&``) of every README bash block that runs docker, in order."""
    out: list[list[str]] = []
    for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.S):
        if not re.search(r"^\s*docker\s", block, flags=re.M):
            continue  # (a quote may span lines in other blocks; split line by line here)
        commands: list[list[str]] = []
        for line in block.replace("\\\n", " ").splitlines():
            current: list[str] = []
            for token in shlex.split(line, comments=True):
                if token == "&&":
                    commands.append(current)
                    current = []
                else:
                    current.append(token)
            if current:
                commands.append(current)
        out += commands
    return out


RUN_VALUE_OPTIONS = {
    "-p": "publish", "--publish": "publish", "-v": "volume", "--volume": "volume",
    "-e": "env", "--env": "env", "--entrypoint": "entrypoint", "--gpus": "gpus",
    "--name": "name", "-u": "user", "--user": "user",
}  # fmt: skip
RUN_FLAGS = {"--rm", "-d", "--detach", "-i", "-t", "-it", "--init"}


def _options(
    tokens: list[str], valued: Mapping[str, str], flags: set[str]
) -> tuple[dict[str, list[str]], list[str]]:
    """Split ``docker ...`` options from the positional rest; an unknown option fails."""
    found: dict[str, list[str]] = {}
    i = 0
    while i < len(tokens) and tokens[i].startswith("-"):
        name, eq, value = tokens[i].partition("=")
        if name in flags and not eq:
            found.setdefault(name, [])
            i += 1
            continue
        assert name in valued, f"tests/containers.py does not know the docker option {name}"
        if not eq:
            i += 1
            value = tokens[i]
        found.setdefault(valued[name], []).append(value)
        i += 1
    return found, tokens[i:]


@dataclass
class Deploy:
    """The README's docker commands, walked in order as a user at the repository root would.

    Files the commands write (compose's ``docker/.env``) go under ``workdir`` instead; the one
    command that writes a file runs without a shell, its output redirected by hand.
    """

    workdir: Path
    tags: dict[str, Path] = field(default_factory=dict)
    containers: list[Container] = field(default_factory=list)

    def walk(self, commands: list[list[str]]) -> Deploy:
        for cmd in commands:
            label = shlex.join(cmd)
            if cmd[0] in ("python", "python3") and cmd[-2:-1] == [">"]:
                made = subprocess.run([sys.executable, *cmd[1:-2]], capture_output=True,
                                      text=True, check=True, timeout=60)  # fmt: skip
                target = self.workdir / cmd[-1]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(made.stdout)
            elif cmd[:2] == ["docker", "build"]:
                self._build(cmd[2:])
            elif cmd[:2] == ["docker", "compose"]:
                self._compose(cmd[2:], label)
            elif cmd[:2] == ["docker", "run"]:
                self._run(cmd[2:], label)
            else:
                raise AssertionError(f"tests/containers.py cannot follow the README's {label!r}")
        return self

    def _build(self, tokens: list[str]) -> None:
        opts, rest = _options(tokens, {"-f": "file", "--file": "file", "-t": "tag",
                                       "--tag": "tag"}, set())  # fmt: skip
        assert rest == ["."], "build from the repository root, as the Dockerfiles say"
        for tag in opts["tag"]:
            self.tags[tag] = (ROOT / opts["file"][0]).resolve()

    def _compose(self, tokens: list[str], label: str) -> None:
        opts, rest = _options(tokens, {"-f": "file", "--file": "file",
                                       "--env-file": "env_file"}, set())  # fmt: skip
        assert rest[:1] == ["up"], rest
        assert set(rest[1:]) <= {"-d", "--detach"}, rest
        compose = (ROOT / opts["file"][0]).resolve()
        # Compose reads --env-file, else the .env beside the compose file.
        env_path = opts.get("env_file", [str(compose.parent.relative_to(ROOT) / ".env")])[0]
        values = env_file(self.workdir / env_path) if (self.workdir / env_path).exists() else {}
        for name, service in compose_services(compose, values).items():
            container = compose_container(name, service, compose, label)
            self.tags[service["image"]] = container.image.dockerfile
            self.containers.append(container)

    def _run(self, tokens: list[str], label: str) -> None:
        opts, rest = _options(tokens, RUN_VALUE_OPTIONS, RUN_FLAGS)
        tag, args = rest[0], rest[1:]
        assert tag in self.tags, f"{label}: no command above builds {tag}"
        image = parse_dockerfile(self.tags[tag])
        env = dict(image.env)
        for item in opts.get("env", []):
            name, sep, value = item.partition("=")
            assert sep, f"{label}: -e {item} takes its value from the caller's environment"
            env[name] = value
        volumes = {v: "(anonymous)" for v in image.volumes}
        for spec in opts.get("volume", []):
            source, target = spec.split(":")[:2]
            volumes[target] = source
        entrypoint = opts["entrypoint"][-1:] if "entrypoint" in opts else image.entrypoint
        cmd = args if args or "entrypoint" in opts else image.cmd
        self.containers.append(Container(
            label=label, image=image, argv=[*entrypoint, *cmd], env=env, volumes=volumes,
            ports=[_port(p) for p in opts.get("publish", [])],
        ))  # fmt: skip


# ---- running one ---------------------------------------------------------------------------------


@dataclass
class Launch:
    """A container's process, mapped onto this machine: argv, environment and where things go."""

    argv: list[str]
    env: dict[str, str]
    port: int
    paths: dict[str, Path]  # container path -> temporary directory


def launch(container: Container, tmp: Path, port: int) -> Launch:
    """Map the container's volumes to directories under ``tmp`` and its port to ``port``.

    The environment is the container's exactly, plus what a container has without asking:
    ``PATH`` (here: this interpreter's ``bin``, where ``tessera`` and ``python`` live) and
    ``HOME``. Paths under a volume, in the environment and in the arguments, are mapped.
    """
    paths = {c: tmp / "volumes" / c.strip("/").replace("/", "_") for c in container.volumes}
    for path in paths.values():
        path.mkdir(parents=True, exist_ok=True)
    (tmp / "home").mkdir(exist_ok=True)

    def mapped(value: str) -> str:
        for inside, outside in paths.items():
            if value == inside or value.startswith(inside + "/"):
                return str(outside) + value[len(inside) :]
        return value

    assert container.env.get("TESSERA_PORT"), "the image names its port in TESSERA_PORT"
    env = {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.defpath]),
        "HOME": str(tmp / "home"),
    }
    env.update({name: mapped(value) for name, value in container.env.items()})
    env["TESSERA_PORT"] = str(port)
    return Launch([mapped(a) for a in container.argv], env, port, paths)
