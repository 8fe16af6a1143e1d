"""The paper's experiments, reproduced: one module per figure, results cached."""

from .figure1 import figure1 as figure1
