"""The repository's Dockerfile read as Docker reads it: instructions, their exec forms and ENV values."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


DOCKERFILE = ROOT / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    line: int  # 1-based line of the instruction's first line
    keyword: str  # upper case: FROM, RUN, ...
    args: str  # the rest, continuation lines joined, comment lines inside the instruction dropped

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form CMD/ENTRYPOINT/HEALTHCHECK CMD, else None."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            match = re.search(r"(?:^|\s)CMD\s+(.*)$", text, re.S)
            if match is None:
                return None
            text = match.group(1)
        text = text.strip()
        return json.loads(text) if text.startswith("[") else None


def parse_dockerfile(text: str) -> list[Instruction]:
    """Docker's own reading: `\\` continues a line, a line whose first non-blank is `#` is a comment (also inside a
    continued instruction), blank lines end nothing."""
    instructions: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not parts:
            start = number
        if stripped.endswith("\\"):
            parts.append(stripped[:-1].strip())
            continue
        parts.append(stripped)
        keyword, _, args = " ".join(p for p in parts if p).partition(" ")
        instructions.append(Instruction(start, keyword.upper(), args.strip()))
        parts = []
    assert not parts, "the Dockerfile ends inside a continued instruction"
    return instructions


def env_values(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV":
            for word in shlex.split(ins.args):
                key, sep, value = word.partition("=")
                assert sep, f"line {ins.line}: use ENV key=value (the legacy `ENV key value` form is ambiguous)"
                env[key] = value
    return env
