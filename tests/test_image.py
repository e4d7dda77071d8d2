"""The image compose builds, checked without a Docker engine: the files the Dockerfile copies (less what
.dockerignore keeps out of the build context) go into a scratch root, its RUN line's ``pip install`` puts
them into a clean virtual environment, and from there ``orders-api migrate`` and the image's CMD run
against the test database."""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath

import httpx
import pytest

from tests.processes import own_env, serving_command, wait_ready

CONTEXT = Path(__file__).resolve().parents[1]
WRITE_TOKEN, READ_TOKEN = "image-write-token", "image-read-token"


@dataclass(frozen=True)
class Copy:
    sources: list[str]
    destination: PurePosixPath
    into_directory: bool


@dataclass
class Dockerfile:
    """What this test needs of a Dockerfile: its COPYs, its ``pip install`` (where it runs, with what)
    and its CMD."""

    copies: list[Copy] = field(default_factory=list)
    install: tuple[PurePosixPath, list[str]] | None = None
    command: list[str] = field(default_factory=list)


def instructions(text: str) -> Iterator[tuple[str, str]]:
    """(instruction, its arguments), continuation lines joined, comments left out."""
    for line in re.sub(r"\\\n", " ", text).splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, arguments = line.strip().partition(" ")
            yield instruction.upper(), arguments.strip()


def words(arguments: str) -> list[str]:
    """An instruction's arguments in either of Docker's forms: exec (JSON) or shell."""
    return list(json.loads(arguments)) if arguments.startswith("[") else shlex.split(arguments)


def read_dockerfile(text: str) -> Dockerfile:
    read = Dockerfile()
    workdir = PurePosixPath("/")
    for instruction, arguments in instructions(text):
        if instruction == "WORKDIR":
            workdir = workdir / arguments
        elif instruction == "COPY":
            # Flags (--chown, --chmod) change nothing this test can see.
            *sources, destination = [word for word in words(arguments) if not word.startswith("--")]
            into_directory = destination.endswith("/") or destination == "." or len(sources) > 1
            read.copies.append(Copy(sources, workdir / destination, into_directory))
        elif instruction == "RUN":
            for command in map(shlex.split, arguments.split("&&")):
                if command[:2] == ["pip", "install"]:
                    read.install = (workdir, command[2:])
        elif instruction == "CMD":
            read.command = words(arguments)
    return read


def ignore_patterns(text: str) -> list[tuple[str, ...]]:
    """.dockerignore's patterns, split into path segments."""
    patterns = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert not [pattern for pattern in patterns if pattern.startswith("!")], "teach this test .dockerignore's '!'"
    return [PurePosixPath(pattern.strip("/")).parts for pattern in patterns]


def matches(pattern: Sequence[str], parts: Sequence[str]) -> bool:
    """Docker's matching: ``*`` and ``?`` within one segment, ``**`` over any number of them."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(matches(pattern[1:], parts[start:]) for start in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], pattern[0]) and matches(pattern[1:], parts[1:])


def ignored(path: PurePosixPath, patterns: list[tuple[str, ...]]) -> bool:
    """Whether ``path`` (in the context) is outside the build context: it, or a folder holding it, matches."""
    return any(matches(pattern, path.parts[:end]) for pattern in patterns for end in range(1, len(path.parts) + 1))


def copy(instruction: Copy, root: Path, patterns: list[tuple[str, ...]]) -> None:
    """Docker's COPY from the build context into ``root``: a folder's contents into the destination,
    a file to it (or into it, when it is a folder)."""
    target = root / instruction.destination.relative_to("/")

    def leave_out(directory: str, names: list[str]) -> set[str]:
        here = PurePosixPath(Path(directory).relative_to(CONTEXT))
        return {name for name in names if ignored(here / name, patterns)}

    for source in instruction.sources:
        found = [name for name in glob.glob(source, root_dir=CONTEXT) if not ignored(PurePosixPath(name), patterns)]
        assert found, f"COPY {source}: not in the build context"
        for name in found:
            origin = CONTEXT / name
            if origin.is_dir():
                shutil.copytree(origin, target, symlinks=True, ignore=leave_out, dirs_exist_ok=True)
            else:
                into = target / origin.name if instruction.into_directory else target
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, into)


@dataclass(frozen=True)
class Image:
    """The scratch image: its WORKDIR's copy, the virtual environment standing for its Python, its CMD."""

    workdir: Path
    venv: Path
    command: list[str]

    def env(self, **settings: str) -> dict[str, str]:
        """None of the service's settings but ``settings``, this environment's Python first on PATH,
        and nothing that would lead a child to this checkout (PYTHONPATH, the tests' own environment)."""
        unlike_the_image = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
        inherited = {name: value for name, value in own_env(**settings).items() if name not in unlike_the_image}
        return {**inherited, "PATH": os.pathsep.join([str(self.venv / "bin"), os.defpath])}

    def run(self, *command: str, timeout: float = 120, **settings: str) -> subprocess.CompletedProcess[str]:
        """``command`` from the WORKDIR, as ``docker run`` would; its output and errors in ``stdout``."""
        return subprocess.run(
            command,
            cwd=self.workdir,
            env=self.env(**settings),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    """The Dockerfile's file set in a scratch root, installed by its ``pip install`` into a clean venv."""
    dockerfile = read_dockerfile((CONTEXT / "Dockerfile").read_text())
    patterns = ignore_patterns((CONTEXT / ".dockerignore").read_text())
    scratch = tmp_path_factory.mktemp("image")
    for instruction in dockerfile.copies:
        copy(instruction, scratch / "root", patterns)
    assert dockerfile.install is not None, "no `RUN pip install ...` in the Dockerfile: teach this test its install"
    workdir, arguments = dockerfile.install
    image = Image(scratch / "root" / workdir.relative_to("/"), scratch / "venv", dockerfile.command)
    subprocess.run([sys.executable, "-m", "venv", image.venv], check=True, timeout=120)
    # pip's cache (which the image's PIP_NO_CACHE_DIR turns off) keeps this to seconds.
    pip = ("python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check")
    installed = image.run(*pip, *arguments, timeout=600)
    assert installed.returncode == 0, f"pip install in the image:\n{installed.stdout}"
    return image


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_file_set_the_dockerfile_copies_installs_migrates_and_serves(
    image: Image, empty_database: str, tmp_path: Path
) -> None:
    # This checkout is out of reach, so what runs below is only what the image holds: bench/, a dev
    # tool, must not be importable.
    bench = image.run("python", "-c", "import bench")
    assert "No module named 'bench'" in bench.stdout, bench.stdout

    migrated = image.run("orders-api", "migrate", DATABASE_URL=empty_database)
    assert migrated.returncode == 0, f"orders-api migrate in the image:\n{migrated.stdout}"

    log = tmp_path / "serve.log"
    env = image.env(DATABASE_URL=empty_database, WRITE_API_TOKENS=WRITE_TOKEN, READ_API_TOKENS=READ_TOKEN)
    # The image's own CMD; the --host and --port added after its own win.
    with serving_command(image.command, env=env, log=log, cwd=image.workdir) as (process, url):
        wait_ready(url, process, log)
        customer = {"email": "image@example.com", "name": "Image"}
        created = httpx.post(f"{url}/v1/customers", json=customer, headers=bearer(WRITE_TOKEN), timeout=10)
        assert created.status_code == 201, f"{created.text}\n{log.read_text()}"
        read = httpx.get(f"{url}{created.headers['Location']}", headers=bearer(READ_TOKEN), timeout=10)
        assert read.status_code == 200, f"{read.text}\n{log.read_text()}"
        assert read.json()["email"] == customer["email"]
    assert process.returncode == 0, f"serve did not stop cleanly on SIGTERM:\n{log.read_text()}"
