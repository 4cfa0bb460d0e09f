"""CUDA-graph training forward: which batches replay the graph and which run the plain module,
and that nothing changes where there is no CUDA device. (Capture itself needs a GPU; it is
exercised by scripts/cuda_session.sh, whose runs record `cuda_graphs` in train_summary.json.)"""

import torch
from torch import nn

from brainlib.cuda_graphs import GraphedTraining, graph_training_step
from brainlib.loader import to_device
from brainlib.models import SeedCNN


class _Marked(nn.Module):
    """A module whose 'graphed' forward (what make_graphed_callables would patch in) adds 100."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 2)

    def forward(self, x):
        return self.linear(x)


def test_only_full_training_batches_take_the_graphed_forward():
    model = _Marked()
    eager = model.forward
    model.forward = lambda x: eager(x) + 100  # stands in for the captured graph
    wrapped = GraphedTraining(model, torch.Size((4, 2)), eager)
    full, last = torch.randn(4, 2), torch.randn(3, 2)
    wrapped.train()
    assert torch.allclose(wrapped(full), eager(full) + 100)  # a full batch replays the graph
    assert torch.allclose(wrapped(last), eager(last))  # the epoch's last, smaller batch runs eagerly
    wrapped.eval()
    assert not model.training  # eval reaches the inner module: validation runs its plain forward
    assert torch.allclose(wrapped(full), eager(full))
    assert set(wrapped.state_dict()) == {f"model.{k}" for k in model.state_dict()}  # no extra state


def test_without_cuda_the_model_is_returned_unchanged():
    model = SeedCNN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert graph_training_step(model, (2, 3, 224, 224), "cpu", "fp32") is model
    assert "forward" not in vars(model)  # not patched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_to_device_on_cpu_is_a_plain_copy_of_the_values():
    t = torch.arange(6.0).view(2, 3)
    assert torch.equal(to_device(t, "cpu"), t)


def test_drop_last_skips_only_the_smaller_last_batch():
    from brainlib.loader import CachedBatches

    batches = CachedBatches(torch.zeros(10, 8, 8, dtype=torch.uint8).numpy(), list(range(10)), 4, 8, train=True, seed=1)
    assert [len(y) for _, y in batches] == [4, 4, 2] and len(batches) == 3
    batches.drop_last = True
    sizes = [len(y) for _, y in batches]
    assert sizes == [4, 4] and len(batches) == 2
