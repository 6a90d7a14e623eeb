"""count_parameters counts what learns; forward_macs counts multiply-adds; peak_memory counts tensor memory exactly; time_per_call returns medians."""

import pytest
import torch

from course_lib.attention import MultiHeadAttention, chunked_attention, einsum_attention
from course_lib.profiling import count_parameters, forward_macs, peak_memory, time_per_call

MB = 2**20


def test_count_parameters_counts_trainable_ones_unless_asked_for_all():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2, bias=False))  # 3*4 + 4 = 16, 4*2 = 8
    model.register_buffer("running", torch.zeros(100))  # a buffer is not a parameter
    assert count_parameters(model) == count_parameters(model, trainable_only=False) == 24
    model[0].requires_grad_(False)  # a frozen part (like chapter 3's pretrained text encoder)
    assert count_parameters(model) == 8
    assert count_parameters(model, trainable_only=False) == 24
    with torch.device("meta"):  # shapes only: counting needs no memory
        assert count_parameters(torch.nn.Linear(1000, 1000)) == 1_001_000


def test_peak_memory_of_one_allocation():
    # 4 MiB alive at once, freed when the lambda returns
    assert peak_memory(lambda: torch.empty(MB, dtype=torch.float32)) == 4 * MB


def test_peak_memory_counts_what_is_alive_at_once_not_the_total():
    def two_in_a_row():
        for _ in range(2):
            torch.ones(MB // 2, dtype=torch.float32)  # 2 MiB, freed before the next one

    def two_together():
        a = torch.ones(MB // 2, dtype=torch.float32)
        b = torch.ones(MB // 2, dtype=torch.float32)
        return a, b

    assert peak_memory(two_in_a_row) == 2 * MB
    assert peak_memory(two_together) == 4 * MB


def test_peak_memory_sees_the_score_matrix_that_chunking_avoids():
    q, k, v = (torch.randn(1, 2, 1024, 16) for _ in range(3))
    with torch.no_grad():
        full = peak_memory(lambda: einsum_attention(q, k, v))
        chunked = peak_memory(lambda: chunked_attention(q, k, v, chunk_size=128, key_chunk_size=128))
    scores = 2 * 1024 * 1024 * 4  # one float32 [1, 2, N, N] matrix
    assert full >= scores
    assert chunked < scores / 2


def test_time_per_call_returns_positive_medians():
    times = time_per_call({"small": lambda: torch.ones(10).sum(), "big": lambda: torch.ones(10**6).sum()},
                          repeats=3, min_seconds=0.005)
    assert set(times) == {"small", "big"}
    assert all(t > 0 for t in times.values())


def test_time_per_call_rejects_zero_repeats():
    with pytest.raises(ValueError, match="repeats"):
        time_per_call({"f": lambda: None}, repeats=0)


def test_forward_macs_counts_a_linear_layers_multiply_adds():
    layer = torch.nn.Linear(8, 3)
    assert forward_macs(layer, torch.randn(5, 8)) == 5 * 8 * 3  # [5, 8] x [8, 3]; the bias is not a product


def test_forward_macs_counts_attention_products_on_either_path():
    # q k^T and the weighted sum of v: 2 x (heads x L x L x d) multiply-adds; FlopCounterMode alone sees 0 in the
    # fused CPU kernel, so forward_macs runs a module's attention layers on the einsum path
    layer = MultiHeadAttention(dim=8, num_heads=2, impl="sdpa")
    x = torch.randn(1, 6, 8)  # [B, L, D]
    projections = 4 * 6 * 8 * 8  # q, k, v and out, [6, 8] x [8, 8] each
    assert forward_macs(layer, x) == projections + 2 * 2 * 6 * 6 * 4
    assert layer.impl == "sdpa"  # restored
