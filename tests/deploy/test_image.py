"""deploy/Dockerfile, checked where nothing can build it: the entrypoint is the project's own
console script and command line, the files it copies exist, the PostgreSQL tools it installs
and checks are the ones the agent runs, and it runs as a non-root user."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from az_agent.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
CONFIG_PATH = "/etc/az-agent/config.yaml"
TEST_SERVER_MAJOR = 15
"""The PostgreSQL major the test suite runs against (tests/servers/postgres.py)."""


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    result = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def _one(name: str) -> str:
    found = [args for word, args in _instructions() if word == name]
    assert len(found) == 1, f"expected one {name}, found {found}"
    return found[0]


def test_entrypoint_is_the_console_script_running_the_mounted_configuration() -> None:
    entrypoint = json.loads(_one("ENTRYPOINT"))  # exec form: signals reach the agent
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[entrypoint[0]] == "az_agent.cli:main"
    args = build_parser().parse_args(entrypoint[1:])
    assert args.command == "run"
    assert args.config == CONFIG_PATH


def test_copied_sources_exist_and_include_what_the_build_reads() -> None:
    copied = set()
    for word, args in _instructions():
        if word == "COPY":
            *sources, _ = args.split()
            copied.update(sources)
    for source in copied:
        assert (ROOT / source).exists(), source
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {"pyproject.toml", project["readme"], "az_agent"} <= copied


def test_postgres_tools_installed_are_those_the_agent_runs() -> None:
    declared = re.search(r'ARG PG_MAJORS="([\d ]+)"', DOCKERFILE.read_text())
    assert declared is not None
    majors = [int(m) for m in declared[1].split()]
    assert majors == sorted(majors)
    assert TEST_SERVER_MAJOR in majors
    dumper = (ROOT / "az_agent/drivers/postgres/dumper.py").read_text()
    tools = set(re.findall(r'find_tool, "(\w+)"', dumper))
    assert tools == {"pg_dump", "pg_restore"}
    run = " ".join(args for word, args in _instructions() if word == "RUN")
    assert "postgresql-client-$major" in run
    for tool in tools:
        # every major's copy is run once at build time, and the one on PATH too
        assert f"/usr/lib/postgresql/$major/bin/{tool} --version" in run
        assert re.search(rf"(^|[;&] *){tool} --version", run), tool


def test_runs_as_a_non_root_user() -> None:
    user = _one("USER")
    uid = user.split(":")[0]
    assert uid.isdigit(), f"{user}: numeric, so runAsNonRoot can verify it"
    assert int(uid) != 0
    assert _instructions()[-1][0] == "ENTRYPOINT"
