"""Packaging beyond what pyproject.toml can say: the top-level `baselines/` folder (the built-in
strategies, laid out beside the package) installs as `medsafetyworld.baselines`, so the
distribution claims no top-level import name but its own (`baselines` is taken on PyPI). The
top-level `real_world/` folder (the real-web track, issue 15) installs the same way, as
`medsafetyworld.real_world`."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["medsafetyworld", "medsafetyworld.*"]), "medsafetyworld.baselines",
              "medsafetyworld.real_world"],
    package_dir={"medsafetyworld.baselines": "baselines", "medsafetyworld.real_world": "real_world"},
)
