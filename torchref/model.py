"""The tutorial's ``NeuralNetwork``: moved to :mod:`torchref.models.mlp`; this name stays for
the code and docs that import it."""

from torchref.models.mlp import NeuralNetwork, activations  # noqa: F401
