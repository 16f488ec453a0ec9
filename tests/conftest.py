import pytest
import torch

from fedunlearn_lib import load_dataset


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="session")
def small_digits(digits):
    """30 training and 10 test images per class."""
    return digits.subset(30, 10, seed=0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
