"""EAGLE-3 building blocks: shift, target distribution, step loss and tau_sim oracles."""

import pytest
import torch
from torch import nn

from eagle_ext.eagle3 import compute_target_distribution, shift_left_with_zero, simulated_accept_length
from eagle_ext.eagle3.loss import eagle3_step_loss, resolve_loss_impl
from eagle_ext.eagle3.metrics import Eagle3StepMetrics


def test_shift_left_with_zero_oracles():
    assert shift_left_with_zero(torch.tensor([[1, 2, 3]])).tolist() == [[2, 3, 0]]
    assert shift_left_with_zero(torch.tensor([[1, 0, 1]])).tolist() == [[0, 1, 0]]
    flags = shift_left_with_zero(torch.tensor([[True, False, True]]))
    assert flags.dtype == torch.bool and flags.tolist() == [[False, True, False]]
    x = torch.arange(12.0).view(1, 3, 4)
    out = shift_left_with_zero(x)
    assert torch.equal(out[:, :2], x[:, 1:]) and torch.equal(out[:, 2], torch.zeros(1, 4))
    assert x[0, 0, 0] == 0.0 and out is not x  # input untouched
    with pytest.raises(ValueError, match=r"\[B, T, \.\.\.\], got \[3\]"):
        shift_left_with_zero(torch.tensor([1, 2, 3]))


def test_target_distribution_renormalises_and_drops_out_of_vocab_argmax():
    logits = torch.tensor([[[0.0, 5.0, 1.0, 2.0], [3.0, 0.0, 1.0, 9.0]]])  # argmax 1 (in), 3 (out)
    ids = torch.tensor([2, 1])
    mask = torch.zeros(4, dtype=torch.bool)
    mask[ids] = True
    probs, position_mask = compute_target_distribution(logits, ids, mask, torch.ones(1, 2))
    assert probs.dtype == torch.float32 and probs.shape == (1, 2, 2)
    torch.testing.assert_close(probs[0, 0], torch.softmax(torch.tensor([1.0, 5.0]), 0))
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 2))
    assert position_mask.shape == (1, 2, 1) and position_mask.flatten().tolist() == [True, False]
    _, masked = compute_target_distribution(logits, ids, mask, torch.tensor([[0, 1]]))
    assert masked.flatten().tolist() == [False, False]
    with pytest.raises(ValueError, match=r"selected_token_mask must have shape \[V=4\]"):
        compute_target_distribution(logits, ids, mask[:3], torch.ones(1, 2))


class _IdentityHead(nn.Module):
    """Draft stand-in whose logits are its hidden states (to pin the loss arithmetic)."""

    def __init__(self, width):
        super().__init__()
        self.lm_head = nn.Linear(width, width, bias=False)
        with torch.no_grad():
            self.lm_head.weight.copy_(torch.eye(width))

    def lm_head_input(self, h):
        return h

    def compute_logits(self, h):
        return self.lm_head(h)


def test_soft_ce_is_a_masked_mean_over_valid_positions():
    draft = _IdentityHead(2)
    logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0]]])
    onehot = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    res = eagle3_step_loss(draft, logits, onehot, torch.tensor([[True, False]]))
    assert res.loss.dtype == torch.float32
    assert res.loss.item() == pytest.approx(0.126928, abs=1e-5)  # -log_softmax([2, 0])[0]
    assert res.valid.dtype == torch.int64 and res.valid.item() == 1
    assert res.correct.tolist() == [[True, False]]
    both = eagle3_step_loss(draft, logits, onehot, torch.tensor([[True, True]]))
    assert both.loss.item() == pytest.approx((0.126928 + 2.126928) / 2, abs=1e-5)
    assert both.correct.tolist() == [[True, False]]
    empty = eagle3_step_loss(draft, logits, onehot, torch.tensor([[False, False]]))
    assert empty.loss.item() == 0.0 and empty.valid.item() == 0


@pytest.mark.parametrize("impl", ["reference", "fused"])
@pytest.mark.parametrize("k", [0, 1, 3, 6, 9])
def test_step_loss_row_offset_equals_a_shifted_target(impl, k):
    # the TTT unroll reads the step-0 target at slot t + k instead of shifting a copy k times; T = 6, so
    # k = 6 and 9 leave no target at all (loss 0, nothing correct)
    g = torch.Generator().manual_seed(k)
    b, t, vd = 2, 6, 5
    draft = _IdentityHead(vd)
    hidden = torch.randn(b, t, vd, generator=g) * 3
    probs = torch.softmax(torch.randn(b, t, vd, generator=g) * 2, -1)
    mask = torch.rand(b, t, generator=g) < 0.8
    shifted_probs, shifted_mask = probs, mask
    for _ in range(k):
        shifted_probs, shifted_mask = shift_left_with_zero(shifted_probs), shift_left_with_zero(shifted_mask)
    expected = eagle3_step_loss(draft, hidden, shifted_probs, shifted_mask, loss_impl="reference")
    got = eagle3_step_loss(draft, hidden, probs, shifted_mask, loss_impl=impl, row_offset=k)
    torch.testing.assert_close(got.loss, expected.loss)
    assert torch.equal(got.correct, expected.correct) and got.valid == expected.valid
    if k >= t:
        assert got.loss.item() == 0.0 and not got.correct.any()
    with pytest.raises(ValueError, match="row_offset must be an int >= 0, got -1"):
        eagle3_step_loss(draft, hidden, probs, mask, loss_impl=impl, row_offset=-1)


def test_loss_impl_resolution():
    assert resolve_loss_impl("reference") == "reference"
    assert resolve_loss_impl("auto") in ("reference", "fused")
    with pytest.raises(ValueError, match="loss_impl must be one of"):
        resolve_loss_impl("triton")


def test_simulated_accept_length_oracles():
    assert simulated_accept_length([2, 1], [4, 4]) == pytest.approx(1.75)
    assert simulated_accept_length([2, 2], [4, 4]) == pytest.approx(2.0)
    assert simulated_accept_length([2, 0], [4, 4]) == pytest.approx(1.5)
    assert simulated_accept_length(torch.tensor([0, 0]), torch.tensor([0, 0])) == pytest.approx(1.0)
    assert simulated_accept_length(torch.tensor([3, 1, 0]), torch.tensor([4, 2, 0])) == pytest.approx(2.25)
    with pytest.raises(ValueError, match="equally long"):
        simulated_accept_length([1], [1, 2])
    with pytest.raises(ValueError, match="must not exceed"):
        simulated_accept_length([3], [2])
    metrics = Eagle3StepMetrics(loss=torch.tensor(1.0), accuracy=torch.tensor(0.5), valid_tokens=torch.tensor(8),
                                step_prefix_hits=torch.tensor([2, 1]), step_valid=torch.tensor([4, 4]))
    assert metrics.simulated_accept_length == pytest.approx(1.75)
