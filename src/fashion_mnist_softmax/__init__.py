"""Softmax regression on Fashion-MNIST, from scratch and concise, with Lightning and Hydra."""

__version__ = "0.1.0"
