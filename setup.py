"""Packaging beyond what pyproject.toml can say: the top-level `baselines/` folder (the built-in
strategies, laid out beside the package) installs as `medsafetyworld.baselines`, so the
distribution claims no top-level import name but its own (`baselines` is taken on PyPI)."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["medsafetyworld", "medsafetyworld.*"]), "medsafetyworld.baselines"],
    package_dir={"medsafetyworld.baselines": "baselines"},
)
