"""Stand-ins shared by tests of several packages (no tests here).

Importable from every test folder: pytest puts ``Testing/`` (the folder of the root
``conftest.py``) on ``sys.path``.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import torch


class OutOfGpuMemoryAbove(torch.nn.Module):
    """``network``, raising CUDA's out-of-memory error for batches of more than ``limit``
    windows (a GPU too small for the window batch), recording every call's batch size."""

    def __init__(self, network: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.network, self.limit = network, limit
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(int(x.shape[0]))
        if x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.network(x)


def write_earlier_prediction_file(path: str, prediction) -> None:
    """Write ``prediction`` (full form) in the ``.npz`` layout the Slicer module's inference
    process used before ``save_prediction`` existed: its array fields except probs,
    confidence and entropy, the other fields as JSON in ``__meta__``."""
    arrays, meta = {}, {}
    for f in dataclasses.fields(prediction):
        value = getattr(prediction, f.name)
        if value is None or f.name in ("probs", "confidence", "entropy", "scores"):
            continue
        if isinstance(value, np.ndarray):
            arrays[f.name] = value
        else:
            meta[f.name] = value
    arrays["__meta__"] = np.frombuffer(json.dumps(meta, default=str).encode(), dtype=np.uint8)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


class WithHead(torch.nn.Module):
    """``net`` followed by ``head`` over the class channels: ``"softmax"``, ``"log_softmax"``,
    ``"sigmoid"`` or anything else for none (a network from another framework that ends in
    probabilities or log-probabilities). Scriptable with TorchScript."""

    def __init__(self, net: torch.nn.Module, head: str) -> None:
        super().__init__()
        self.net = net
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        if self.head == "softmax":
            return torch.softmax(y, dim=1)
        if self.head == "log_softmax":
            return torch.log_softmax(y, dim=1)
        if self.head == "sigmoid":
            return torch.sigmoid(y)
        return y
