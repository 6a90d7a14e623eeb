"""count_parameters counts what learns; peak_memory counts tensor memory exactly; time_per_call returns medians."""

import pytest
import torch

from course_lib.attention import chunked_attention, einsum_attention
from course_lib.profiling import count_parameters, peak_memory, time_per_call

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
